"""Fuzzing (hypothesis, slow tier): the manifest reader, the GGUF metadata reader and the template renderer.

Each target gets random and mutated input for a few seconds (``BUDGET_S``; examples past the budget
return at once) and must either succeed or raise koquant's own error: never another exception, a
hang or, for templates, a side effect (a canary file the payloads would create).
"""

from __future__ import annotations

import json
import struct
import time

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koquant.errors import KoquantError

from . import hostile

pytestmark = pytest.mark.slow
BUDGET_S = 4.0
FUZZ = settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))


class Budget:
    """Examples after ``BUDGET_S`` seconds do nothing, so each target's run is bounded in time."""

    def __init__(self):
        self.end = None

    def spent(self) -> bool:
        if self.end is None:
            self.end = time.monotonic() + BUDGET_S
        return time.monotonic() > self.end


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
paths = st.sampled_from(["m.gguf", "tokenizer/tokenizer.json", "../escape", "/etc/passwd", "", ".", "a//b",
                         "int4/model.onnx", "tokenizer", "koquant.json", "a\\b", "x\x00y"]) | st.text(max_size=20)


def _valid_manifest() -> dict:
    sha = "a" * 64
    return {"schema": 1, "format": "gguf", "name": "m",
            "files": [{"path": "m.gguf", "quant": "F16", "sha256": sha, "size": 1, "validation": {}, "notes": []}],
            "tokenizer": {"folder": "tokenizer"}, "chat_template": {"template": "{{ x }}", "sha256": sha},
            "generation_config": {}, "inventory": {"m.gguf": {"size": 1, "sha256": sha}}, "notes": []}


def _mutations():
    """A valid manifest with one entry (at any depth) replaced by random JSON or a random path."""
    return st.tuples(st.lists(st.sampled_from(["files", 0, "path", "quant", "size", "inventory", "m.gguf", "sha256",
                                                "tokenizer", "folder", "format", "chat_template", "template"]),
                              max_size=3), json_values | paths)


def _apply(manifest, keys, value):
    node = manifest
    for k in keys[:-1]:
        try:
            node = node[k]
        except (KeyError, IndexError, TypeError):
            return manifest
    if not keys:
        return value
    try:
        node[keys[-1]] = value
    except (IndexError, TypeError):
        pass
    return manifest


def test_fuzz_manifest_reader(tmp_path):
    from koquant.runtime.loader import resolve
    from koquant.artifact.verify import verify_artifact

    art = tmp_path / "art"
    (art / "tokenizer").mkdir(parents=True)
    (art / "m.gguf").write_bytes(b"x")
    budget = Budget()

    @FUZZ
    @given(st.one_of(_mutations().map(lambda m: _apply(_valid_manifest(), *m)), json_values,
                     st.binary(max_size=200)))
    def check(manifest):
        if budget.spent():
            return
        blob = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        (art / "koquant.json").write_bytes(blob)
        for read in (verify_artifact, resolve):
            try:
                read(art)
            except KoquantError:
                pass

    check()


def _valid_gguf() -> bytes:
    return hostile.gguf_bytes(kv=(("general.architecture", hostile.STRING, "llama"),
                                  ("general.name", hostile.STRING, "fuzz"),
                                  ("llama.block_count", hostile.U32, 2),
                                  ("tokenizer.ggml.tokens", hostile.ARRAY, (hostile.STRING, ["a", "b", "가"])),
                                  ("tokenizer.ggml.scores", hostile.ARRAY, (hostile.U32, [1, 2, 3]))))


@st.composite
def _mutated_gguf(draw):
    data = bytearray(_valid_gguf())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["byte", "u64", "cut", "insert"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "u64":  # a length or count field replaced by something large
            data[at:at + 8] = struct.pack("<Q", draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**62, 2**64 - 1])))
        elif kind == "cut":
            del data[at:]
            if not data:
                data = bytearray(b"G")
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def test_fuzz_gguf_metadata_reader(tmp_path):
    from koquant.plan import read_gguf

    p = tmp_path / "f.gguf"
    budget = Budget()

    @FUZZ
    @given(_mutated_gguf() | st.binary(min_size=0, max_size=120).map(lambda b: b"GGUF\x03\0\0\0" + b))
    def check(data):
        if budget.spent():
            return
        p.write_bytes(data)
        try:
            f = read_gguf(p)
        except KoquantError:
            return
        assert f.file_size == len(data) and f.data_offset <= len(data) + f.alignment

    check()


_PIECES = ["{{ ", " }}", "{% for m in messages %}", "{% endfor %}", "{% if ", " %}", "{% endif %}", "messages",
           "m", "m['content']", "m.role", "[0]", ".__class__", ".__globals__", ".__init__", ".__subclasses__()",
           ".mro()", "|attr('__globals__')", "|attr('__init__')", "cycler", "joiner", "lipsum", "namespace",
           "namespace()", "dict", "raise_exception('x')", "'x' * 999999999", "9 ** 99999", "range(10**10)",
           "range(3)", "~", " + ", "'a'", ".append(1)", ".update({})", "|tojson", "|list", "|join(',')",
           "os.system('touch CANARY')", "['os']", ".popen('touch CANARY')", "self", "bos_token", "(", ")", ","]


def test_fuzz_template_renderer(tmp_path):
    from koquant.source.chat_template import MAX_OUTPUT_CHARS, TemplateError, render_chat

    canary = tmp_path / "canary"
    budget = Budget()

    @FUZZ
    @given(st.lists(st.sampled_from(_PIECES), max_size=14).map("".join),
           st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", ""]),
                                            "content": st.text(max_size=20)}), max_size=3))
    def check(template, messages):
        if budget.spent():
            return
        try:
            out = render_chat(template.replace("CANARY", str(canary)), messages, bos_token="<s>", eos_token="</s>")
        except TemplateError:
            pass
        else:
            assert isinstance(out, str) and len(out) <= MAX_OUTPUT_CHARS
        assert not canary.exists(), template

    check()
