"""Hostile input, one row each: the message, the exit code, nothing written, nothing executed.

Every row damages a private copy of a random-weight miniature (or writes a hostile GGUF or
artifact) and runs the ``koquant`` command line on it in-process. Each must stop with one
message naming the cause plus a hint, exit 2, leave the output folder empty (no temporary
folders beside it) and the working folder untouched, and never run the code it carries (a
canary file that the payloads would create stays absent). The readers' bounds themselves
(no allocation sized by a declared length) are tested at the end with tracemalloc.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from koquant.cli.main import main
from koquant.errors import KoquantError
from koquant.testing.miniatures import materialize

from . import hostile


@dataclass
class Ctx:
    model: Path
    out: Path
    tmp: Path
    canary: Path

    def export(self, *extra: str) -> list[str]:
        return ["export", str(self.model), "--quant", "F16", "--no-calib", "-o", str(self.out), *extra]


# ---------------------------------------------------------------------------- checkpoint damage
def _config(c: Ctx, **changes) -> list[str]:
    cfg = json.loads((c.model / "config.json").read_text())
    cfg.update(changes)
    (c.model / "config.json").write_text(json.dumps(cfg))
    return c.export()


def _tokenizer_config(c: Ctx, **changes) -> list[str]:
    cfg = json.loads((c.model / "tokenizer_config.json").read_text())
    cfg.update(changes)
    (c.model / "tokenizer_config.json").write_text(json.dumps(cfg))
    return c.export()


def _safetensors_header(c: Ctx, edit) -> list[str]:
    """Rewrite the header of model.safetensors with ``edit(header)`` (data bytes unchanged)."""
    p = c.model / "model.safetensors"
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    new = edit(header)
    blob = new if isinstance(new, bytes) else json.dumps(new).encode()
    p.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
    return c.export()


def _first_tensor(header: dict) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def _huge_shape(h):
    h[_first_tensor(h)]["shape"] = [2**40, 2**40]
    return h


def _overlap(h):
    names = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
    a, b = h[names[0]], h[names[1]]
    b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + b["data_offsets"][1] - b["data_offsets"][0]]
    return h


def _bad_dtype(h):
    h[_first_tensor(h)]["dtype"] = "F128"
    return h


def _declared_length(c: Ctx) -> list[str]:
    p = c.model / "model.safetensors"
    with open(p, "r+b") as f:
        f.write(struct.pack("<Q", 2**60))  # a header of an exabyte: must never be allocated
    return c.export()


def _truncated_data(c: Ctx) -> list[str]:
    p = c.model / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 4096])
    return c.export()


def _four_bytes(c: Ctx) -> list[str]:
    (c.model / "model.safetensors").write_bytes(b"\x10\0\0\0")
    return c.export()


def _pickle_payload(c: Ctx, allow: bool) -> list[str]:
    (c.model / "model.safetensors").unlink()
    hostile.write_pickle_payload(c.model / "pytorch_model.bin", c.canary)
    return c.export(*(["--allow-pickle"] if allow else []))


def _index_escape(c: Ctx) -> list[str]:
    names = json.loads((c.model / "model.safetensors").read_bytes()[8:8 + struct.unpack(
        "<Q", (c.model / "model.safetensors").read_bytes()[:8])[0]])
    wm = {k: "../outside/model.safetensors" for k in names if k != "__metadata__"}
    (c.model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    return c.export()


def _token_id_not_int(c: Ctx) -> list[str]:
    tj = json.loads((c.model / "tokenizer.json").read_text())
    tj["model"]["vocab"][next(iter(tj["model"]["vocab"]))] = "zero"
    (c.model / "tokenizer.json").write_text(json.dumps(tj))
    return c.export()


def _deep_json(c: Ctx) -> list[str]:
    (c.model / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    return c.export()


def _template(c: Ctx, payload: str) -> list[str]:
    (c.model / "chat_template.jinja").write_text(payload.replace("CANARY", str(c.canary)))
    return ["export", str(c.model), "--quant", "Q8_0", "--calib-chat", "--calib-chunks", "1", "-o", str(c.out)]


# ---------------------------------------------------------------------------- GGUF and artifact input
def _gguf(c: Ctx, data: bytes) -> list[str]:
    p = c.tmp / "hostile.gguf"
    p.write_bytes(data)
    return ["chat", str(p), "--prompt", "안녕"]


def _artifact(c: Ctx, manifest) -> list[str]:
    art = c.tmp / "artifact"
    art.mkdir()
    (art / "x.gguf").write_bytes(b"x")
    (art / "koquant.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return ["verify", str(art)]


_SHA = "0" * 64


@dataclass(frozen=True)
class Case:
    make: object  # Ctx -> argv
    message: str
    code: int = 2


CASES = {
    # pickle: refused, and with --allow-pickle loaded with weights_only=True, which refuses the payload
    "pickle with a code payload": Case(lambda c: _pickle_payload(c, False), "holds only pickle weights"),
    "pickle payload with --allow-pickle": Case(lambda c: _pickle_payload(c, True),
                                               "could not be loaded with weights_only=True"),
    # safetensors: corrupt headers, huge declared lengths, truncated data
    "safetensors header length 2**60": Case(_declared_length, "header declares 1152921504606846976 bytes"),
    "safetensors shape 2**40 x 2**40": Case(lambda c: _safetensors_header(c, _huge_shape),
                                            "offsets do not match its shape"),
    "safetensors header nested 100000 deep": Case(
        lambda c: _safetensors_header(c, lambda h: b"[" * 100_000 + b"]" * 100_000), "header is not JSON"),
    "safetensors overlapping tensors": Case(lambda c: _safetensors_header(c, _overlap), "overlap in the data"),
    "safetensors unknown dtype": Case(lambda c: _safetensors_header(c, _bad_dtype), "has dtype 'F128'"),
    "safetensors truncated data": Case(_truncated_data, "model.safetensors is truncated"),
    "safetensors of 4 bytes": Case(_four_bytes, "only 4 bytes (truncated)"),
    # config.json with absurd values
    "hidden_size 10**12": Case(lambda c: _config(c, hidden_size=10**12),
                               "hidden_size=1000000000000 is outside the range koquant accepts"),
    "negative layer count": Case(lambda c: _config(c, num_hidden_layers=-3), "lacks valid values for num_hidden_layers"),
    "vocab_size 0": Case(lambda c: _config(c, vocab_size=0), "lacks valid values for vocab_size"),
    "hidden_size as a string": Case(lambda c: _config(c, hidden_size="256"), "lacks valid values for hidden_size"),
    "more layers than the weights": Case(lambda c: _config(c, num_hidden_layers=3),
                                         "num_hidden_layers=3 but the weights hold layers 0-1"),
    "hidden_size that does not fit the weights": Case(lambda c: _config(c, hidden_size=128),
                                                      "config.json does not match the weights"),
    "kv heads not dividing heads": Case(lambda c: _config(c, num_key_value_heads=3),
                                        "is not a multiple of num_key_value_heads=3"),
    "negative rope_theta": Case(lambda c: _config(c, rope_theta=-1.0), "rope_theta=-1.0 is not a positive number"),
    "config nested 100000 deep": Case(_deep_json, "config.json is not valid JSON: nested too deeply"),
    # paths in tokenizer and index files pointing outside the model folder
    "vocab_file ../../../etc/passwd": Case(lambda c: _tokenizer_config(c, vocab_file="../../../etc/passwd"),
                                           "points outside the model folder"),
    "tokenizer_file /etc/passwd": Case(lambda c: _tokenizer_config(c, tokenizer_file="/etc/passwd"),
                                       "points outside the model folder"),
    "index weight_map ../outside": Case(_index_escape, "points outside the model folder"),
    "token id that is not an integer": Case(_token_id_not_int, "not a non-negative integer"),
    # chat templates with sandbox-escape payloads (rendered for --calib-chat before any work)
    "template walking to os.system": Case(
        lambda c: _template(c, "{{ cycler.__init__.__globals__.os.system('touch CANARY') }}"),
        "the chat template tried an unsafe operation"),
    "template reaching Popen via subclasses": Case(
        lambda c: _template(c, "{% for k in [].__class__.__base__.__subclasses__() %}{% if k.__name__ == 'Popen' %}"
                               "{{ k(['touch', 'CANARY']) }}{% endif %}{% endfor %}"),
        "the chat template tried an unsafe operation"),
    "template building a 10 GB string": Case(lambda c: _template(c, "{{ 'x' * 10000000000 }}"),
                                             "tried to build an oversized string"),
    # GGUF files given to `koquant chat`: checked by koquant's bounded reader before llama.cpp sees them
    "GGUF without magic": Case(lambda c: _gguf(c, b"GGML" + hostile.gguf_bytes()[4:]), "is not a GGUF file"),
    "GGUF string of 2**62 bytes": Case(lambda c: _gguf(c, hostile.gguf_bytes(raw_kv=hostile.huge_string_kv())),
                                       "value of general.name needs 4611686018427387904 bytes"),
    "GGUF array of 2**61 elements": Case(lambda c: _gguf(c, hostile.gguf_bytes(raw_kv=hostile.huge_array_kv())),
                                         "claims 2305843009213693952 elements"),
    "GGUF claiming 2**40 tensors": Case(lambda c: _gguf(c, hostile.gguf_bytes(n_tensors=2**40)),
                                        "header claims 1099511627776 tensors"),
    "GGUF with truncated tensor data": Case(lambda c: _gguf(c, hostile.gguf_bytes()[:-64]), "is truncated"),
    "GGUF cut inside its metadata": Case(lambda c: _gguf(c, hostile.gguf_bytes()[:70]), "but only 1 remain"),
    # artifacts given to `koquant verify`
    "manifest listing ../../etc/passwd": Case(
        lambda c: _artifact(c, {"format": "gguf", "inventory": {"../../etc/passwd": {"size": 1, "sha256": _SHA}}}),
        "which leaves the artifact folder"),
    "manifest with files as a string": Case(lambda c: _artifact(c, {"format": "gguf", "files": "x.gguf"}),
                                            "'files' is not a list of objects"),
    "manifest that is not JSON": Case(lambda c: _artifact(c, "{format: gguf"), "is not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_input(case, tmp_path, capsys, monkeypatch):
    row = CASES[case]
    c = Ctx(materialize("synatra-mini", tmp_path / "model", trained=False), tmp_path / "out", tmp_path,
            tmp_path / "canary")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv = row.make(c)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == row.code, err
    assert row.message in err, err
    assert "hint:" in err and "Traceback" not in err, err
    assert not c.out.exists() or not any(c.out.iterdir()), "output left behind"
    assert [p.name for p in tmp_path.iterdir() if ".koquant-" in p.name] == []
    assert list(cwd.iterdir()) == []
    assert not c.canary.exists(), "the hostile input ran code"


# ---------------------------------------------------------------------------- bounded readers
def _peak_bytes(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    except KoquantError:  # only the allocation is measured here; the messages are tested above
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("data", [
    hostile.gguf_bytes(raw_kv=hostile.huge_string_kv()),
    hostile.gguf_bytes(raw_kv=hostile.huge_array_kv()),
    hostile.gguf_bytes(n_tensors=2**40, n_kv=2**40),
    # an array of 2**14 empty arrays: walked, never materialized (kept, they would take ~3 MiB)
    hostile.gguf_bytes(raw_kv=struct.pack("<Q", 4) + b"nest" + struct.pack("<IIQ", hostile.ARRAY, hostile.ARRAY, 2**14)
                       + struct.pack("<IQ", hostile.U32, 0) * 2**14),
], ids=["string 2**62", "array 2**61", "2**40 tensors and keys", "2**14 nested arrays"])
def test_gguf_reader_never_allocates_what_a_header_declares(data, tmp_path):
    from koquant.plan import read_gguf

    p = tmp_path / "x.gguf"
    p.write_bytes(data)
    assert _peak_bytes(lambda: read_gguf(p)) < 2**20


def test_safetensors_reader_never_allocates_what_a_header_declares(tmp_path):
    from koquant.source.safetensors import read_safetensors_header

    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", 2**60) + b"{}" + bytes(100))
    assert _peak_bytes(lambda: read_safetensors_header(p)) < 2**20
    header = json.dumps({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}).encode()
    p.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    assert _peak_bytes(lambda: read_safetensors_header(p)) < 2**20
