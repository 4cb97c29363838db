"""A baseline computed once, anywhere: the source's scored rows in a file that later benches reuse.

``koquant bench MODEL --save-baseline FILE`` (:func:`koquant.bench.save_baseline`) runs the source
over the bench's text as a live bench does (transformers, in the dtype its weights are stored in;
on CUDA where torch sees a GPU, else the CPU) and writes what the exports are compared against.
``koquant bench MODEL ARTIFACT... --baseline FILE`` reads that instead of running the source, so a
machine that could never hold the source's weights can bench its exports: MODEL then needs only
its config and tokenizer (the token ids are checked against the file's).

FILE is a safetensors file (:class:`SavedBaseline`):

- the rows a live bench keeps of its baseline (:class:`~koquant.bench.quality.BaselineRecorder`):
  the float32 logits of every scored position, or, past 1 GiB, each position's top-4096 log-probs
  with their ids, the log of the remaining mass and the argmax. The exports are scored against these
  very arrays, so KL, top-1 and perplexity equal a live run's on the same device and dtype, bit for bit;
- ``chunks``: the token ids the source was fed, ``[chunks, ctx]`` int32;
- ``__metadata__["koquant_baseline"]``: a JSON record of the model's file hashes (those the
  checkpoint and every export's manifest record), the text's sha256, the chunking, dtype and device,
  the koquant version, the source's own scores, and each tensor's sha256.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from .settings import BenchError, BenchSettings

SCHEMA = 1
KEY = "koquant_baseline"  # the metadata entry holding the record
CHUNKS = "chunks"  # the tensor of token ids
_SAVE = "koquant bench MODEL --save-baseline FILE"
#: what of the source worker's result a later bench reports (its timings and memory are the saving machine's)
_RESULT_KEYS = ("backend", "device", "kl_method", "quality", "mc_logliks")


def _sha256_array(a) -> str:
    from ..source.safetensors import row_blocks

    h = hashlib.sha256()
    for block in row_blocks(a):
        h.update(block.tobytes())
    return h.hexdigest()


def requests_sha256(requests) -> str | None:
    """The multiple-choice probe as the source scored it: every choice's ids and first scored index."""
    if not requests:
        return None
    return hashlib.sha256(json.dumps([[list(ids), start] for ids, start in requests]).encode()).hexdigest()


@dataclass
class SavedBaseline:
    """A baseline file, opened and checked whole (its record, its tensors against their sha256)."""

    path: Path
    record: dict

    # ------------------------------------------------------------------ writing
    @classmethod
    def write(cls, path: Path, rows_dir: Path, *, ckpt, source, text, tokens, settings: BenchSettings, dtype: str,
              threads: int, mc: tuple[str, list] | None, requests, result: dict) -> "SavedBaseline":
        """Write the rows ``rows_dir`` holds (a :class:`~koquant.bench.quality.BaselineRecorder` folder) and the
        record of how they were made (``result``: the source worker's) to ``path``."""
        from .. import __version__
        from ..source.safetensors import write_safetensors
        from .quality import row_arrays

        arrays = {**row_arrays(rows_dir), CHUNKS: tokens.ids}
        record = {
            "schema": SCHEMA, "koquant": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"name": ckpt.name, "files": ckpt.file_hashes(), "stored_dtype": ckpt.source_dtype,
                      "file_bytes": source.file_bytes, "bytes_per_token": source.bytes_per_token},
            "text": {"name": text.name, "sha256": text.sha256, "tokens": tokens.n_tokens},
            "chunking": {"ctx": settings.ctx, "chunks": int(tokens.ids.shape[0]), "first_scored": settings.first_scored,
                         "scored_per_chunk": settings.scored_per_chunk, "bos_id": tokens.bos_id},
            "dtype": dtype, "device": result["device"], "threads": threads, "kind": result["kl_method"],
            "mc": {"name": mc[0], "items": len(mc[1]), "sha256": requests_sha256(requests)} if mc else None,
            "result": {k: result[k] for k in _RESULT_KEYS if k in result},
            "sha256": {name: _sha256_array(a) for name, a in arrays.items()},
        }
        write_safetensors(path, arrays, {KEY: json.dumps(record, ensure_ascii=False)})
        return cls(Path(path), record)

    # ------------------------------------------------------------------ reading
    @classmethod
    def open(cls, path: str | os.PathLike) -> "SavedBaseline":
        from .. import __version__
        from ..source.safetensors import open_memmap, read_safetensors
        from .quality import ROW_ARRAYS

        path = Path(path).expanduser()
        if not path.is_file():
            what = f"baseline file {path} does not exist" if not path.exists() else f"--baseline {path} is not a file"
            raise BenchError(what, hint=f"save one first: {_SAVE}")
        damaged = f"baseline file {path} is damaged"
        again = f"copy it again, or save it again: {_SAVE}"
        try:
            tensors, metadata = read_safetensors(path)
        except CheckpointError as e:
            raise BenchError(f"{damaged}: {e.message}", hint=again) from None
        if KEY not in metadata:
            raise BenchError(f"{path} is not a koquant baseline file (a safetensors file without koquant's record)",
                             hint=f"pass a file written by {_SAVE}")
        try:
            record = json.loads(metadata[KEY])
            schema = record["schema"]
        except (json.JSONDecodeError, RecursionError, TypeError, KeyError):
            raise BenchError(f"{damaged}: its record is not readable", hint=again) from None
        if schema != SCHEMA:
            raise BenchError(f"{path} is a baseline of schema {schema}; koquant {__version__} reads schema {SCHEMA}",
                             hint=f"save it again with this koquant: {_SAVE}")
        try:
            ch = record["chunking"]
            shape, rows = (ch["chunks"], ch["ctx"]), ch["chunks"] * ch["scored_per_chunk"]
            names = {CHUNKS, *ROW_ARRAYS[record["kind"]]}
            sums = dict(record["sha256"])
            dict(record["model"]["files"])
            missing = [k for k in ("text", "dtype", "device", "result") if k not in record]
        except (KeyError, TypeError, ValueError):
            missing = ["model files, chunking, kind or sha256"]
        if missing:
            raise BenchError(f"{damaged}: its record has no {', '.join(missing)}", hint=again)
        if set(tensors) != names:
            raise BenchError(f"{damaged}: it holds the tensors {', '.join(sorted(tensors))}, not "
                             f"{', '.join(sorted(names))}", hint=again)
        for name, info in tensors.items():
            if not (info.shape == shape if name == CHUNKS else info.shape[:1] == (rows,)):
                raise BenchError(f"{damaged}: tensor {name} is {list(info.shape)}, which does not fit its "
                                 f"{shape[0]} chunks of {shape[1]} tokens", hint=again)
            if _sha256_array(open_memmap(path, info)) != sums.get(name):
                raise BenchError(f"{damaged}: tensor {name} does not match its sha256", hint=again)
        return cls(path, record)

    @property
    def dtype(self) -> str:
        return self.record["dtype"]

    @property
    def device(self) -> str:
        return self.record["device"]

    @property
    def stored_dtype(self) -> str:
        return self.record["model"]["stored_dtype"]

    # ------------------------------------------------------------------ checks against this bench
    def _mismatch(self, what: str, detail: str, hint: str) -> BenchError:
        return BenchError(f"baseline {self.path} does not fit this bench: the {what} differs ({detail})", hint=hint)

    def check_settings(self, settings: BenchSettings) -> None:
        """Before anything is read: the dtype and chunk size asked for are the file's."""
        ch = self.record["chunking"]
        if not settings.quality:
            raise BenchError("a baseline file serves the quality numbers, and quality is off",
                             hint="drop the baseline, or measure quality too")
        asked = settings.baseline_dtype
        if asked is not None and asked != self.dtype:
            raise self._mismatch("dtype", f"--baseline-dtype {asked}; it was computed in {self.dtype}",
                                 hint=f"drop --baseline-dtype, or save a {asked} baseline: {_SAVE} --baseline-dtype {asked}")
        if settings.ctx != ch["ctx"] or (settings.chunks is not None and settings.chunks != ch["chunks"]):
            asked = f"{settings.chunks or 'all'} chunks of {settings.ctx} tokens"
            raise self._mismatch("chunking", f"this bench asks for {asked}; it holds {ch['chunks']} chunks of "
                                 f"{ch['ctx']} tokens", hint=self._chunking_hint())

    def _chunking_hint(self) -> str:
        ch = self.record["chunking"]
        return (f"pass --ctx {ch['ctx']} --chunks {ch['chunks']} as it was saved with, or save a new one with these "
                "settings")

    def check_model(self, folder: Path) -> list[str]:
        """MODEL's files are the ones the baseline was computed from. Its weights may be absent (they are never
        loaded); whatever of config, tokenizer and weights is there must hash as recorded. Returns notes."""
        from ..source.checkpoint import TOKENIZER_FILES, sha256_file

        folder = Path(folder).expanduser()
        if not (folder / "config.json").is_file():
            what = f"no config.json in {folder}" if folder.is_dir() else f"model folder {folder} does not exist"
            raise BenchError(what, hint="pass the source's folder; with --baseline it needs only config.json and its "
                                  "tokenizer files, not its weights")
        recorded = self.record["model"]["files"]
        present = sorted({folder / "config.json", *(folder / n for n in TOKENIZER_FILES if (folder / n).is_file()),
                          *folder.glob("*.safetensors")})
        differ = [f"{p.name} is not one of its files" if p.name not in recorded else f"{p.name} has other content"
                  for p in present if recorded.get(p.name) != sha256_file(p)]
        names = {p.name for p in present}
        kept = {"config.json", *TOKENIZER_FILES}  # the bench reads these from MODEL; the weights it never loads
        differ += [f"{n} is missing" for n in sorted(recorded) if n in kept and n not in names]
        if differ:
            raise self._mismatch("model", f"{self.record['model']['name']} was saved, {folder.name} given: "
                                 + "; ".join(differ),
                                 hint=f"pass the model the baseline was saved from, or save a new one: {_SAVE}")
        absent = sorted(n for n in recorded if n not in kept and n not in names)
        return [f"the source's weights ({', '.join(absent)}) are not in {folder}; the baseline's model was checked "
                "by its config, tokenizer and the exports' manifests"] if absent else []

    def check_exports(self, targets) -> None:
        """Each koquant export was made from the model the baseline was computed from (its manifest's hashes)."""
        from ..runtime.loader import resolve

        recorded = self.record["model"]["files"]
        for t in targets:
            manifest = resolve(t.path, t.quant).manifest
            files = (manifest.source or {}).get("files") if manifest is not None else None
            if isinstance(files, dict) and files != recorded:
                names = sorted(n for n in {*files, *recorded} if files.get(n) != recorded.get(n))
                raise self._mismatch("model", f"{t.name} was exported from another model than the baseline's: "
                                     f"{', '.join(names)} differ", hint="bench it against a baseline saved from "
                                     f"the model it was exported from: {_SAVE}")

    def check_text(self, text) -> None:
        want = self.record["text"]
        if text.sha256 != want["sha256"]:
            raise self._mismatch("text", f"it was saved for {want['name']!r} (sha256 {want['sha256'][:12]}), this "
                                 f"bench reads {text.name!r} (sha256 {text.sha256[:12]})",
                                 hint="pass --text with the file it was saved for (none: the built-in text), "
                                      "or save a new baseline for this text")

    def check_tokens(self, tokens, requests) -> None:
        """The chunks cut here are the file's, id for id; so is the multiple-choice probe, when there is one."""
        import numpy as np

        from ..source.safetensors import open_memmap, read_safetensors

        saved = open_memmap(self.path, read_safetensors(self.path)[0][CHUNKS])
        if saved.shape != tokens.ids.shape:
            raise self._mismatch("chunking", f"this bench cuts {tokens.ids.shape[0]} chunks of {tokens.ids.shape[1]} "
                                 f"tokens; it holds {saved.shape[0]} chunks of {saved.shape[1]}",
                                 hint=self._chunking_hint())
        diff = np.argwhere(saved != tokens.ids)
        if len(diff):
            c, i = (int(v) for v in diff[0])
            raise self._mismatch("token ids", f"first at chunk {c}, position {i}: {int(saved[c, i])} there, "
                                 f"{int(tokens.ids[c, i])} here; the tokenizer tokenizes the text differently",
                                 hint=f"bench with the tokenizer (and transformers) it was saved with, or save a new "
                                      f"one: {_SAVE}")
        mc = self.record.get("mc")
        if requests and not mc:
            raise self._mismatch("multiple-choice probe", "--mc was given; it holds no multiple-choice scores",
                                 hint=f"drop --mc, or save the baseline with it: {_SAVE} --mc JSONL")
        if requests and requests_sha256(requests) != mc["sha256"]:
            raise self._mismatch("multiple-choice probe", f"it was saved with {mc['name']!r} ({mc['items']} items)",
                                 hint=f"pass --mc with the file it was saved with, or save a new one: {_SAVE} "
                                      "--mc JSONL")

    # ------------------------------------------------------------------ standing in for the source run
    def source_target(self, folder: Path):
        from .targets import BenchTarget

        m = self.record["model"]
        return BenchTarget("source", "hf", str(folder), None, str(folder), file_bytes=m["file_bytes"],
                           bytes_per_token=m["bytes_per_token"])

    def source_result(self, notes: list[str], mc: bool) -> dict:
        """The source worker's result as a live bench gets it: its scores (no latency: it was not run here)."""
        r = {k: v for k, v in self.record["result"].items() if mc or k != "mc_logliks"}
        return {**r, "notes": list(notes)}

    def describe(self) -> dict:
        """What the report says of the file."""
        r = self.record
        return {"path": str(self.path), "created": r["created"], "koquant": r["koquant"], "device": self.device,
                "dtype": self.dtype, "threads": r.get("threads"),
                "saved": f"saved by koquant {r['koquant']} on {r['created']}; the source was not run in this bench"}


# ---------------------------------------------------------------------------- where it is written
def check_destination(path: Path, force: bool) -> None:
    """Before the source runs: ``path`` can be written, and replaces nothing but an earlier baseline unless forced."""
    if path.is_dir():
        raise BenchError(f"--save-baseline {path} is a folder", hint="give a file path, e.g. baseline.safetensors")
    if path.exists() and not force and not _is_baseline(path):
        raise BenchError(f"{path} exists and is not a koquant baseline; refusing to overwrite it",
                         hint="choose another file, or pass --force to replace it")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"cannot create {parent}: {e.strerror}", hint="choose a writable location") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BenchError(f"{parent} is not writable", hint="choose a writable location for --save-baseline")


def _is_baseline(path: Path) -> bool:
    from ..source.safetensors import read_safetensors

    try:
        return KEY in read_safetensors(path)[1]
    except (CheckpointError, OSError):
        return False


@contextlib.contextmanager
def staged_file(path: Path):
    """A scratch folder beside ``path``; what is written to its ``file`` replaces ``path`` in one rename on success.
    On failure (or if the process is killed: the supervisor removes staged folders) nothing is left."""
    from .. import procs

    tmp = path.with_name(f".{path.name}.koquant-tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    procs.note_staging(tmp)
    try:
        yield tmp
        os.replace(tmp / "file", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        procs.note_staging(tmp, done=True)
