"""The bench's :class:`Report`: every number per export, and ``report.md`` / ``report.json`` / ``report.png``."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from .settings import BenchSettings

REPORT_SCHEMA = 1
#: the numbers each entry carries at its top level (report.json's columns)
QUALITY_KEYS = ("ppl", "ppl_ratio", "nll_mean", "kl_mean", "kl_p99", "kl_max", "top1", "positions")
_VERSIONED = ("koquant", "numpy", "torch", "transformers", "tokenizers", "llama_cpp_python", "onnxruntime",
              "onnxruntime-genai", "gptqmodel", "optimum", "matplotlib")


@dataclass
class Report:
    source: dict
    baseline: dict  # the source's own entry (perplexity, latency) as run by transformers
    exports: list[dict]
    settings: dict
    text: dict
    machine: dict
    versions: dict
    mc: dict | None = None
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}: given, but not a model
    wall_s: float = 0.0
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, *, source, baseline_dtype: str, stored_dtype: str, targets, results: dict, settings: BenchSettings,
              threads: int, text, tokens, mc, machine: dict, versions: dict, wall_s: float,
              skipped: list[dict] = (), baseline_file: dict | None = None) -> "Report":
        """``baseline_file``: :meth:`~koquant.bench.baseline.SavedBaseline.describe` of the baseline file read
        instead of running the source, if one was."""
        bandwidth = (machine.get("memory_bandwidth") or {}).get("bytes_per_s")
        base = _entry(source, results[source.name], None, bandwidth)
        base["dtype"] = baseline_dtype
        exports = [_entry(t, results[t.name], base, bandwidth) for t in targets]
        mc_info = None
        if mc is not None:
            from .quality import choice_scores

            name, items = mc
            base["mc"] = choice_scores(items, results[source.name]["mc_logliks"])
            for e, t in zip(exports, targets):
                e["mc"] = choice_scores(items, results[t.name]["mc_logliks"], base["mc"]["picks"])
            for e in (base, *exports):
                e["mc_acc"] = e["mc"]["acc"]
            mc_info = {"file": name, "items": len(items),
                       "scoring": "sum of the log-probabilities of the choice's tokens after the context (acc), "
                                  "and that sum per character of the choice (acc_norm)"}
        ctx = settings.ctx
        text_info = {
            "name": text.name, "sha256": text.sha256, "tokens": tokens.n_tokens,
            "tokenizer": "the source tokenizer; every runtime is fed these ids",
        }
        if settings.quality:
            text_info.update(ctx=ctx, chunks=int(tokens.ids.shape[0]), scored_per_chunk=settings.scored_per_chunk,
                             first_scored=settings.first_scored, bos_id=tokens.bos_id,
                             chunking=(f"{tokens.ids.shape[0]} chunks of {ctx} tokens cut from the start of the "
                                       "tokenized text, each evaluated from an empty cache with its first token set "
                                       f"to BOS; positions {settings.first_scored}..{ctx - 2} of each chunk are "
                                       f"scored ({settings.scored_per_chunk} next tokens per chunk), as "
                                       "llama.cpp's llama-perplexity does"))
            kind = results[source.name].get("kl_method")
            if kind:
                from .quality import kl_method

                text_info["kl_method"] = kl_method(kind)
        return cls(
            source={"path": str(source.path), "name": Path(source.path).resolve().name, "stored_dtype": stored_dtype,
                    "baseline_dtype": baseline_dtype, "baseline_runtime": "transformers",
                    "baseline_device": results[source.name].get("device", "cpu"),
                    "baseline_dtype_is_stored": baseline_dtype == stored_dtype, "baseline_file": baseline_file},
            baseline=base, exports=exports, settings=settings.to_dict() | {"threads": threads}, text=text_info,
            machine=machine, versions=versions, mc=mc_info, skipped=list(skipped), wall_s=wall_s)

    # ------------------------------------------------------------------ reading
    def export(self, name: str) -> dict:
        for e in self.exports:
            if e["name"] == name:
                return e
        raise KeyError(f"no export {name!r} in the report (it has {', '.join(e['name'] for e in self.exports)})")

    @property
    def names(self) -> list[str]:
        return [e["name"] for e in self.exports]

    def to_dict(self) -> dict:
        return {"schema": REPORT_SCHEMA, "created": self.created, "wall_s": self.wall_s, "source": self.source,
                "baseline": self.baseline, "exports": self.exports, "settings": self.settings, "text": self.text,
                "mc": self.mc, "skipped": self.skipped, "machine": self.machine, "versions": self.versions}

    def quality_numbers(self) -> dict:
        """Every quality number per entry (what must be equal when the same inputs are benched again)."""
        keys = (*QUALITY_KEYS, "chunk_ppl")
        out = {}
        for e in (self.baseline, *self.exports):
            out[e["name"]] = {k: e.get(k) for k in keys}
            if "mc" in e:
                out[e["name"]]["mc"] = {**{k: e["mc"][k] for k in ("acc", "acc_norm", "picks")},
                                        "logliks": e.get("mc_logliks")}
        return out

    # ------------------------------------------------------------------ rendering
    def to_markdown(self) -> str:
        s, t = self.source, self.text
        quality = self.settings.get("quality", True)
        latency = self.settings.get("latency", True)
        lines = [f"# koquant bench: {s['name']}", ""]
        dtype_note = ("the dtype it is stored in" if s["baseline_dtype_is_stored"]
                      else f"--baseline-dtype; it is stored as {s['stored_dtype']}")
        where = f" on {s.get('baseline_device', 'cpu')}"
        if s.get("baseline_file"):
            where += f", read from `{Path(s['baseline_file']['path']).name}` ({s['baseline_file']['saved']})"
        lines += [f"Baseline: the source checkpoint run by transformers in **{s['baseline_dtype']}** ({dtype_note})"
                  f"{where}. "
                  f"Text: `{t['name']}` ({t['tokens']} tokens, sha256 `{t['sha256'][:12]}`), tokenized by the source "
                  "tokenizer; every runtime is fed the same ids.", ""]
        if self.skipped:
            lines += ["Skipped (not a model): " + "; ".join(f"`{s['path']}`: {s['reason']}" for s in self.skipped)
                      + ".", ""]
        rows = [self.baseline, *self.exports]
        if quality:
            lines += ["## Quality", "", f"Chunking: {t['chunking']}. KL divergence is KL(baseline ‖ export) in nats "
                      "and top-1 is the agreement of the most likely next token, at the same scored positions "
                      f"({self.baseline['positions']} in all); KL is computed {t.get('kl_method', 'over the whole vocabulary')}.", ""]
            head = ["export", "runtime", "size MiB", "size ×", "PPL", "PPL ×", "KL mean", "KL p99", "KL max", "top-1"]
            if self.mc:
                head += ["MC acc", "MC agree"]
            lines += [_row(head), _row(["---"] * len(head))]
            for e in rows:
                r = [e["name"], e["backend"], f"{e['file_bytes'] / 2**20:.1f}", f"{e['size_ratio']:.3f}",
                     f"{e['ppl']:.4f}", f"{e['ppl_ratio']:.4f}", _g(e.get("kl_mean")), _g(e.get("kl_p99")),
                     _g(e.get("kl_max")), _f(e.get("top1"), 4)]
                if self.mc:
                    r += [_f(e["mc"]["acc"], 3), _f(e["mc"].get("agreement"), 3)]
                lines.append(_row(r))
            lines.append("")
            if self.mc:
                lines += [f"Multiple choice: `{self.mc['file']}`, {self.mc['items']} items; {self.mc['scoring']}. "
                          "MC agree: the fraction of items where the export picks what the baseline picks.", ""]
        if latency:
            st = self.settings
            bw = self.machine.get("memory_bandwidth", {})
            n_pre = st["prefill"]
            lines += ["## Latency", "",
                      f"CPU, {st['threads']} thread{'s' if st['threads'] != 1 else ''}, context {st['n_ctx']}; median of {st['repeats']} runs after "
                      f"{st['warmup']} warm-up (min–max in brackets). TTFT: a {n_pre[0]}-token prompt to the first "
                      f"token; decode: {st['decode_tokens']} greedy steps after it. Load: koquant.load (the model and the "
                      "source tokenizer), the runtime's libraries already imported. Peak RSS: the worker process running only that export, through load "
                      "and latency. Bound: memory bandwidth "
                      f"({bw.get('bytes_per_s', 0) / 1e9:.1f} GB/s, {bw.get('method', '')}) divided by the weight "
                      "bytes one decode step reads (every weight once; the input embedding table only where it is "
                      "also the output head). Above 100 %, the weights stayed in the CPU caches between steps "
                      "(small models), so the bound does not apply.", ""]
            head = ["export", "load s", "TTFT ms", *[f"prefill {n} tok/s" for n in n_pre], "decode tok/s", "decode ×",
                    "peak RSS MiB", "bound tok/s", "of bound"]
            lines += [_row(head), _row(["---"] * len(head))]
            for e in (e for e in rows if "latency" in e):  # a saved baseline has none
                lat = e["latency"]
                r = [e["name"], f"{e['load_s']:.2f}", _spread(lat["ttft_s"], 1000, 1),
                     *[_spread(lat[f"prefill_{n}_tok_s"], 1, 0) for n in n_pre], _spread(lat["decode_tok_s"], 1, 1),
                     _f(e["decode_ratio"], 2), f"{e['peak_rss_bytes'] / 2**20:.0f}", f"{e['bound_tok_s']:.0f}",
                     f"{e['bound_fraction']:.0%}"]
                lines.append(_row(r))
            lines.append("")
        lines += ["![size vs KL divergence, and decode speed](report.png)", "", "## Machine and versions", ""]
        m = self.machine
        lines.append(f"- CPU: {m.get('cpu')} ({m.get('logical_cpus')} logical CPUs, {m.get('physical_cores')} cores), "
                     f"{m.get('memory_bytes', 0) / 2**30:.1f} GiB RAM, {m.get('platform')}, Python {m.get('python')}")
        lines.append("- " + ", ".join(f"{k} {v}" for k, v in self.versions.items()))
        lines.append(f"- bench wall time {self.wall_s:.0f} s, {self.created}")
        for e in rows:
            for n in e.get("notes", []):
                lines.append(f"- {e['name']}: {n}")
        return "\n".join(lines) + "\n"


def _entry(target, result: dict, base: dict | None, bandwidth: float | None) -> dict:
    e = {"name": target.name, "format": target.format, "quant": target.quant, "path": target.path,
         "model": target.model, "backend": result.get("backend"), "file_bytes": target.file_bytes,
         "bytes_per_token": target.bytes_per_token, "model_bytes": result.get("model_bytes"),
         "threads": result.get("threads"), "import_s": result.get("import_s"), "load_s": result.get("load_s"),
         "latency_s": result.get("latency_s"), "quality_s": result.get("quality_s")}  # wall time of each phase
    e["size_ratio"] = target.file_bytes / base["file_bytes"] if base else 1.0
    q = result.get("quality")
    if q:
        e.update({k: q.get(k) for k in ("ppl", "nll_mean", "positions", "chunk_ppl", "kl_mean", "kl_p99", "kl_max",
                                        "top1")})
        e["ppl_ratio"] = q["ppl"] / base["ppl"] if base else 1.0
    lat = result.get("latency")
    if lat:
        e["latency"] = lat
        e["ttft_s"] = lat["ttft_s"]["median"]
        for k, v in lat.items():
            if k.startswith("prefill_"):
                e[k] = v["median"]
        e["decode_tok_s"] = lat["decode_tok_s"]["median"]
        e["decode_ratio"] = 1.0 if base is None else (  # None: the baseline was read from a file, not run
            e["decode_tok_s"] / base["decode_tok_s"] if base.get("decode_tok_s") else None)
        e["peak_rss_bytes"] = result.get("peak_rss_bytes")
        e["rss_after_load_bytes"] = result.get("rss_after_load_bytes")
        e["rss_before_load_bytes"] = result.get("rss_before_load_bytes")
        if bandwidth and target.bytes_per_token:
            e["bound_tok_s"] = bandwidth / target.bytes_per_token
            e["bound_fraction"] = e["decode_tok_s"] / e["bound_tok_s"]
    if "mc_logliks" in result:
        e["mc_logliks"] = result["mc_logliks"]
    e["notes"] = list(target.notes) + list(result.get("notes", []))
    return e


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _g(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def _f(v, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _spread(st: dict, scale: float, digits: int) -> str:
    return (f"{st['median'] * scale:.{digits}f} ({st['min'] * scale:.{digits}f}–{st['max'] * scale:.{digits}f})")


# ---------------------------------------------------------------------------- environment
def environment() -> tuple[dict, dict]:
    """(machine facts, package versions) for the report."""
    import importlib.metadata as md
    import sys

    machine = {"platform": platform.platform(), "python": sys.version.split()[0], "logical_cpus": os.cpu_count(),
               "cpu": platform.processor() or platform.machine(), "physical_cores": None, "memory_bytes": None}
    try:
        cores = set()
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name":
                machine["cpu"] = value
            elif key == "physical id":
                phys = value
            elif key == "core id":
                core = value
                cores.add((phys, core))
        machine["physical_cores"] = len(cores) or None
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                machine["memory_bytes"] = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    versions = {}
    for pkg in _VERSIONED:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return machine, versions


# ---------------------------------------------------------------------------- writing
#: what marks a folder as an earlier bench report (replaced without --force)
REPORT_LOCATION = {"marker": "report.json", "what": "koquant bench report"}


def write_report(report: Report, folder: Path) -> None:
    from .plot import render

    (folder / "report.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    (folder / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    render(report, folder / "report.png")
