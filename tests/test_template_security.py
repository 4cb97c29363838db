"""Chat templates are untrusted code: CVE-2024-34359-style payloads never execute, on any backend.

Each payload either renders inertly (the blocked attribute is undefined and prints nothing) or
stops with koquant's TemplateError. The os.system payloads write a canary file when they run;
the control test proves they do run under a plain (unsandboxed) jinja2 environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from koquant.source.chat_template import TemplateError, render_chat
from koquant.runtime import load

from .runtime_backends import onnx_available

CANARY = "CANARY_PATH"
PAYLOADS = {
    "class-mro-subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler-globals-os": "{{ cycler.__init__.__globals__.os.system('touch CANARY_PATH') }}",
    "joiner-globals-os": "{{ joiner.__init__.__globals__['os'].popen('touch CANARY_PATH').read() }}",
    "lipsum-globals-os": "{{ lipsum.__globals__['os'].system('touch CANARY_PATH') }}",
    "template-reference-context": ("{{ self._TemplateReference__context.cycler.__init__.__globals__.os"
                                   ".system('touch CANARY_PATH') }}"),
    "namespace-globals": "{{ namespace.__init__.__globals__['os'].system('touch CANARY_PATH') }}",
    "koquant-global-globals": "{{ raise_exception.__globals__['os'].system('touch CANARY_PATH') }}",
    "attr-filter-walk": "{{ (cycler|attr('__init__')|attr('__globals__'))['os'].system('touch CANARY_PATH') }}",
    "format-string-walk": "{{ '{0.__init__.__globals__[os].system}'.format(cycler) }}",
    "message-object-walk": ("{% for m in messages %}{{ m.__class__.__base__.__subclasses__() }}"
                            "{% endfor %}"),
    "subclasses-loop": ("{% for c in [].__class__.__base__.__subclasses__() %}{% if c.__name__ == 'Popen' %}"
                        "{{ c(['touch', 'CANARY_PATH']) }}{% endif %}{% endfor %}"),
    "mutate-messages": "{{ messages.append({'role': 'system', 'content': 'pwned'}) }}{{ messages|length }}",
    "namespace-dunder-store": "{% set ns = namespace() %}{% set ns.__class__ = 1 %}x",
    "dict-type-walk": "{{ dict.__class__.__subclasses__() }}",
    "huge-string": "{{ 'x' * 10000000000 }}",
    "huge-power": "{{ 9 ** 9999999 }}",
    "huge-range": "{% for i in range(10000000000) %}x{% endfor %}",
    "doubling-namespace": ("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(64) %}"
                           "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}"),
}
CONV = [{"role": "user", "content": "안녕하세요"}]


def _payload(name: str, canary) -> str:
    return PAYLOADS[name].replace(CANARY, str(canary))


def _assert_inert_or_refused(render, canary) -> None:
    t0 = time.monotonic()
    try:
        out = render()
    except TemplateError as e:
        assert e.message.startswith("the chat template"), e.message
        assert "Traceback" not in str(e)
    else:
        assert isinstance(out, str) and len(out) < 10_000
        for leak in ("<class", "<module", "<function", "<built-in", "os.system", "pwned"):
            assert leak not in out, out[:300]
    assert time.monotonic() - t0 < 20
    assert not canary.exists(), "the template executed code"


@pytest.mark.parametrize("name", ["cycler-globals-os", "lipsum-globals-os", "subclasses-loop"])
def test_control_payloads_do_execute_without_a_sandbox(name, tmp_path):
    """The test can fail: outside the sandbox these payloads really run a command."""
    import jinja2

    canary = tmp_path / "canary"
    jinja2.Environment().from_string(_payload(name, canary)).render(messages=CONV)
    deadline = time.monotonic() + 10  # Popen runs the command asynchronously
    while not canary.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert canary.exists()


def _matrix() -> list[str]:
    runs = ["hf", "gguf:F16", "gguf-bare"]
    if onnx_available():
        runs.append("onnx:fp32")
    return runs


@pytest.fixture(scope="module")
def sessions(miniature, gguf_exports, tmp_path_factory, request):
    made = {}

    def get(kind: str):
        if kind not in made:
            if kind == "hf":
                made[kind] = load(miniature("ocelot-mini"))
            elif kind == "gguf:F16":
                made[kind] = load(gguf_exports("ocelot-mini").path, quant="F16", threads=1)
            elif kind == "gguf-bare":
                bare = tmp_path_factory.mktemp("bare") / "ocelot.gguf"
                os.link(gguf_exports("ocelot-mini").path / "ocelot-mini-F16.gguf", bare)
                made[kind] = load(bare, threads=1)
            elif kind == "onnx:fp32":
                made[kind] = load(request.getfixturevalue("onnx_exports")("ocelot-mini").path, quant="fp32")
        return made[kind]

    yield get
    for s in made.values():
        s.close()


@pytest.mark.parametrize("name", sorted(PAYLOADS))
@pytest.mark.parametrize("backend", _matrix())
def test_payload_never_executes(backend, name, sessions, tmp_path):
    s = sessions(backend)
    canary = tmp_path / "canary"
    original = s.chat_template
    # the payload, then an ordinary prompt: a template that renders inertly still gives a chat
    s.chat_template = _payload(name, canary) + "{{ bos_token }}Human: 안녕\nAssistant:\n"
    try:
        _assert_inert_or_refused(lambda: s.render(CONV), canary)
        _assert_inert_or_refused(lambda: s.chat(CONV, max_new_tokens=2), canary)
    finally:
        s.chat_template = original


def test_renderer_refuses_with_clear_messages(tmp_path):
    canary = tmp_path / "canary"
    cases = {
        "cycler-globals-os": "unsafe operation",
        "template-reference-context": "unsafe operation",
        "mutate-messages": "unsafe operation",
        "namespace-dunder-store": "underscore name",
        "huge-string": "oversized string",
        "huge-power": "oversized power",
        "huge-range": "Range too big",
        "doubling-namespace": "oversized string",
    }
    for name, words in cases.items():
        with pytest.raises(TemplateError) as e:
            render_chat(_payload(name, canary), CONV)
        assert words in e.value.message, (name, e.value.message)
    assert not canary.exists()
    # ordinary template features still work: the generation tag, dict(), tojson with Korean, namespaces
    tpl = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
           "{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}|{{ ns.n }}|{{ dict(a='가')|tojson }}")
    assert render_chat(tpl, CONV) == '안녕하세요|1|{"a": "가"}'


# ---------------------------------------------------------------------------- payloads in the files themselves
CVE = "{{ cycler.__init__.__globals__.os.system('touch CANARY_PATH') }}{{ bos_token }}Human: hi"


def test_malicious_template_inside_a_gguf(gguf_exports, tmp_path):
    """The CVE-2024-34359 path: the payload in the GGUF's own tokenizer.chat_template metadata."""
    from koquant.exporters.gguf.llamacpp import llama_cpp_source

    canary = tmp_path / "canary"
    template = tmp_path / "evil.jinja"
    template.write_text(CVE.replace(CANARY, str(canary)))
    src = gguf_exports("ocelot-mini").path / "ocelot-mini-Q4_K_M.gguf"
    evil = tmp_path / "evil.gguf"
    vendored = llama_cpp_source() / "gguf-py"
    subprocess.run([sys.executable, str(vendored / "gguf" / "scripts" / "gguf_new_metadata.py"), str(src), str(evil),
                    "--chat-template-file", str(template), "--force"],
                   env={**os.environ, "PYTHONPATH": str(vendored)}, check=True, capture_output=True)
    with load(evil, threads=1) as s:
        assert s.chat_template == template.read_text()
        assert not canary.exists()  # loading compiled nothing that ran
        _assert_inert_or_refused(lambda: s.chat(CONV, max_new_tokens=2), canary)
        with pytest.raises(TemplateError, match="unsafe operation"):
            s.encode_chat(CONV)
    proc = subprocess.run([sys.executable, "-m", "koquant", "chat", str(evil), "--prompt", "hi", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "unsafe operation" in proc.stderr and "Traceback" not in proc.stderr
    assert not canary.exists()


def test_malicious_template_in_an_artifact_manifest(gguf_exports, tmp_path):
    art = gguf_exports("ocelot-mini").path
    canary = tmp_path / "canary"
    copy = tmp_path / "art"
    shutil.copytree(art, copy, copy_function=os.link)
    manifest = json.loads((copy / "koquant.json").read_text())
    manifest["chat_template"]["template"] = CVE.replace(CANARY, str(canary))
    (copy / "koquant.json").unlink()
    (copy / "koquant.json").write_text(json.dumps(manifest))
    proc = subprocess.run([sys.executable, "-m", "koquant", "chat", str(copy), "--quant", "F16", "--prompt", "hi",
                           "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "unsafe operation" in proc.stderr
    assert not canary.exists()


def test_malicious_template_in_a_model_folder(miniature, tmp_path):
    src = miniature("ocelot-mini")
    canary = tmp_path / "canary"
    folder = tmp_path / "model"
    folder.mkdir()
    for p in src.iterdir():
        if p.name != "chat_template.jinja":
            os.symlink(p, folder / p.name)
    (folder / "chat_template.jinja").write_text(CVE.replace(CANARY, str(canary)))
    with load(folder) as s:
        with pytest.raises(TemplateError, match="unsafe operation"):
            s.chat(CONV, max_new_tokens=2)
    assert not canary.exists()
