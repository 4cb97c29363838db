"""The generated model card (README.md) of an artifact."""

from __future__ import annotations

from pathlib import Path

from .manifest import Manifest

def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _hub_line(source: dict) -> str:
    hub = source.get("hub") if isinstance(source, dict) else None
    if not isinstance(hub, dict) or not hub.get("repo_id"):
        return ""
    at = f" at commit `{hub['commit']}`" if hub.get("commit") else ""
    return f" Source: the Hub repo [{hub['repo_id']}](https://huggingface.co/{hub['repo_id']}){at}."


def render_model_card(m: Manifest | dict, *, library: str | None = None, usage: list[str] = ()) -> str:
    """The card of manifest ``m``. ``library``: its ``library_name`` (default: the format's name);
    ``usage``: the "Use" section's lines, which the format's exporter writes (``Exporter.usage``)."""
    if not isinstance(m, Manifest):
        m = Manifest.from_dict(m)
    fmt = m.format
    lines = [
        "---",
        f"base_model: {m.source['base_model']}",
        "quantized_by: koquant",
        f"library_name: {library or fmt}",
        "language:",
        "- ko",
        "tags:",
        f"- {fmt}",
        "- korean",
        "- koquant",
        "---",
        "",
        f"# {m.name} ({fmt.upper()})",
        "",
        f"Exported by koquant {m.tools['koquant']} from `{m.source['name']}` "
        f"({m.source['architecture']}, {m.source['dtype']}). Every file below was loaded back and compared "
        f"with the source on held-out Korean text ({m.evaluation['text']}, {m.evaluation['chunks']} chunks of "
        f"{m.evaluation['chunk_size']} tokens) before it was published." + _hub_line(m.source),
        "",
        "## Validation",
        "",
        "| file | quant | size | top-1 agreement | mean KL | p99 KL | max abs logit diff | vs the plain tool "
        "| token ids identical | passed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in m.files:
        v = f.validation
        lines.append(
            f"| {f.path} | {f.quant} | {_size(f.size)} | {v['top1']:.4f} | {v['kl_mean']:.3g} | "
            f"{v['kl_p99']:.3g} | {v['max_abs_diff']:.3g} | {_vs_plain(v)} | "
            f"{'yes' if v['token_ids_identical'] else 'NO'} | {'yes' if v['passed'] else 'NO'} |"
        )
    plains = [(f.path, f.validation["plain"]) for f in m.files if f.validation.get("plain")]
    if plains:
        lines += ["", "\"vs the plain tool\": the file's mean KL divided by that of the file the plain tool makes of "
                  "the same type on the same positions (below 1: better than it):", ""]
        lines += [f"- {path}: {p['tool']}, mean KL {p['kl_mean']:.3g}, top-1 {p['top1']:.4f}" for path, p in plains]
    if any(f.fallbacks for f in m.files):
        lines += ["", "## Per-tensor fallbacks", "",
                  "Tensors whose row length is not a multiple of the type's block get the nearest type that fits "
                  "(the full list is in `koquant.json`):", ""]
        for f in m.files:
            groups: dict[tuple, list[str]] = {}
            for fb in f.fallbacks:
                groups.setdefault((fb["wanted"], fb["used"], fb["ncols"], fb["block"]), []).append(fb["tensor"])
            for (wanted, used, ncols, block), names in groups.items():
                kinds = sorted({n.split(".", 2)[-1].removesuffix(".weight") for n in names})
                lines.append(f"- {f.path}: {len(names)} tensor{'s' if len(names) > 1 else ''} ({', '.join(kinds)}) wanted {wanted}, used {used} "
                             f"(ncols {ncols} not divisible by {block})")
    cal = m.calibration
    lines += ["", "## Recipe", ""]
    r = m.recipe
    lines.append(f"- quant types: {', '.join(r['quants'])}")
    if cal:
        lines.append(f"- calibration: `{cal['name']}` (sha256 {cal['sha256'][:16]}…), "
                     f"{cal.get('chunks', '?')} chunks × {cal.get('chunk_size', '?')} tokens, "
                     + (cal["used_for"] if "used_for" in cal else f"Korean importance matrix in `{cal.get('file', '-')}`"))
    else:
        lines.append("- calibration: none")
    if m.chat_template["sha256"]:
        lines.append(f"- chat template: the source's own, byte-identical (sha256 {m.chat_template['sha256'][:16]}…)")
    lines += ["", "## Use", "", *usage]
    lines += ["", "The full record (hashes, tool versions, per-tensor types) is in `koquant.json`.", ""]
    return "\n".join(lines)


def _vs_plain(v: dict) -> str:
    """``KL 0.29× of plain Q2_K`` (the user gate's rating), or a dash where nothing was compared."""
    ratio, plain = v.get("kl_vs_plain"), v.get("plain")
    if ratio is None or not plain:
        return "–"
    return f"KL {ratio:.2f}× of plain {plain['quant']}"


def write_model_card(folder: Path, manifest: Manifest | dict, *, library: str | None = None,
                     usage: list[str] = ()) -> Path:
    p = folder / "README.md"
    p.write_text(render_model_card(manifest, library=library, usage=usage), encoding="utf-8")
    return p


def render_bundle_card(parts: list[Manifest], folders: list[str], cards: list[str]) -> str:
    """The card of a multi-format export: one front matter, then each format's own card (``cards``, as
    written in its folder) under a heading of its own."""
    first = parts[0]
    fmts = [m.format for m in parts]
    lines = ["---", f"base_model: {first.source['base_model']}", "quantized_by: koquant", "language:", "- ko", "tags:",
             *[f"- {f}" for f in fmts], "- korean", "- koquant", "---", "",
             f"# {first.name} ({', '.join(f.upper() for f in fmts)})", "",
             "One export of one checkpoint to several formats, with one calibration text and one held-out reference "
             "for all. Each folder is a complete artifact with its own `koquant.json` and card:", ""]
    lines += [f"- [`{folder}/`]({folder}/README.md): {m.format.upper()}, " + ", ".join(str(f.quant) for f in m.files)
              for folder, m in zip(folders, parts)]
    for folder, m, card in zip(folders, parts, cards):
        body = card.split("\n")
        start = next(i for i, line in enumerate(body) if line.startswith("# "))  # after the front matter and title
        lines += ["", f"## {m.format.upper()} (`{folder}/`)", ""]
        lines += ["#" + line if line.startswith("## ") else line for line in body[start + 1:]]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_bundle_card(folder: Path, parts: list[Manifest], folders: list[str]) -> Path:
    """README.md of a bundle, from the cards its parts' folders already hold."""
    cards = [(folder / sub / "README.md").read_text(encoding="utf-8") for sub in folders]
    p = folder / "README.md"
    p.write_text(render_bundle_card(parts, folders, cards), encoding="utf-8")
    return p
