"""One runtime for every export: identical prompts, ids and greedy continuations on every backend.

The references are independent of koquant's runtime: transformers' own
``apply_chat_template`` for prompts and ids, transformers' own ``generate`` for greedy
continuations, llama.cpp's own tokenizer for the cross-check.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from koquant.source.chat_template import TemplateError
from koquant.runtime import ContextLengthError, LoadError, SamplingError, load
from koquant.runtime.loader import available_backends

from .conftest import families_for
from .runtime_backends import onnx_available
from koquant.runtime.sampling import Sampler, SamplingParams
from koquant.runtime.session import END_OF_TURN_MARKERS, Backend, Session
from koquant.runtime.tokenizer import HFTokenizer, StreamDecoder

SYSTEM = {"role": "system", "content": "당신은 한국어로 정중하게 답하는 비서입니다."}
TURNS = [
    {"role": "user", "content": "자기소개서를 첨삭해 주세요:\n저는 성실하고 책임감이 강한 사람입니다."},
    {"role": "assistant", "content": "[첨삭] 문장이 간결합니다. 구체적인 경험을 덧붙이세요."},
    {"role": "user", "content": " 앞에 공백이 있는 질문: 대한민국 헌법 제1조는 무엇인가요?"},
    {"role": "assistant", "content": "대한민국은 민주공화국이다."},
    {"role": "user", "content": "요약 할 문장 :\n[국회 회의에서 예산안을 논의했다.]"},
]
CONVERSATIONS = {
    "single": TURNS[:1],
    "single+system": [SYSTEM, *TURNS[:1]],
    "3-turn": TURNS,
    "3-turn+system": [SYSTEM, *TURNS],
}


def _matrix() -> list[str]:
    """The backends of the parity matrix: the source (transformers) and each unquantized export."""
    runs = ["hf", "gguf:F16"]
    if onnx_available():
        runs.append("onnx:fp32")
    return runs  # GPTQ is 4-bit, never unquantized: its runtime checks are in test_gptq_export.py


MATRIX = _matrix()
EXPORTS = [b for b in MATRIX if b != "hf"]


def backends_of(family: str) -> list[str]:
    """The backends of the matrix that the family's architecture exports to (and the source)."""
    return [b for b in MATRIX if b == "hf" or family in families_for(b.partition(":")[0])]


@pytest.fixture(scope="module")
def sessions(miniature, gguf_exports, request):
    """sessions(family, backend) -> Session, loaded once per module."""
    made: dict[tuple[str, str], Session] = {}

    def get(family: str, backend: str) -> Session:
        key = (family, backend)
        if key not in made:
            kind, _, variant = backend.partition(":")
            if kind == "hf":
                made[key] = load(miniature(family))
            elif kind == "gguf":
                made[key] = load(gguf_exports(family).path, quant=variant, threads=1)
            elif kind == "onnx":
                made[key] = load(request.getfixturevalue("onnx_exports")(family).path, quant=variant)
            else:
                raise AssertionError(f"no loader for {backend} in this test")
        return made[key]

    yield get
    for s in made.values():
        s.close()


@pytest.fixture(scope="module")
def hf_reference(miniature):
    """reference(family) -> (transformers tokenizer, fp32 model) of the source checkpoint."""
    cache: dict = {}

    def get(family: str):
        if family not in cache:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = miniature(family)
            cache[family] = (AutoTokenizer.from_pretrained(path),
                             AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval())
        return cache[family]

    return get


def _hf_prompt(tok, conv) -> tuple[str, list[int]]:
    text = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    ids = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    return text, list(ids)


def _refuses(tok, conv) -> bool:
    """transformers' own rendering refuses the conversation (the template raises)."""
    import jinja2

    try:
        tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
    except jinja2.TemplateError:
        return True
    return False


# ---------------------------------------------------------------------------- prompts and ids
@pytest.mark.parametrize("conv", sorted(CONVERSATIONS))
@pytest.mark.family_backends(MATRIX)
def test_prompt_and_ids_identical_to_transformers(family, backend, conv, sessions, hf_reference):
    s = sessions(family, backend)
    tok, _ = hf_reference(family)
    messages = CONVERSATIONS[conv]
    if _refuses(tok, messages):  # e.g. Gemma 2's own template has no system turn: refused alike
        with pytest.raises(TemplateError):
            s.render(messages)
        return
    want_text, want_ids = _hf_prompt(tok, messages)
    assert s.render(messages).encode("utf-8") == want_text.encode("utf-8")
    ids = s.encode_chat(messages)
    assert ids == want_ids
    # exactly one BOS, at the start, for families whose prompt carries one
    if tok.bos_token_id is not None and tok.bos_token in want_text:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    # the conversation's text survives: every message content is in the prompt (some templates trim it)
    for m in messages:
        assert m["content"].strip() in want_text


def test_same_prompt_ids_on_every_backend(family, sessions, hf_reference):
    tok, _ = hf_reference(family)
    for conv in CONVERSATIONS.values():
        if _refuses(tok, conv):
            continue  # a template without a system turn: the refusal is checked above
        got = {b: sessions(family, b).encode_chat(conv) for b in backends_of(family)}
        assert len({tuple(v) for v in got.values()}) == 1, got


def test_llama_cpp_tokenizer_cross_check(family, sessions, gguf_exports):
    """The GGUF's own tokenizer agrees with the source ids; the check reports llama.cpp's real ids."""
    import llama_cpp

    s = sessions(family, "gguf:F16")
    vocab_only = llama_cpp.Llama(model_path=str(gguf_exports(family).path / f"{family}-F16.gguf"),
                                 vocab_only=True, verbose=False)
    for conv in CONVERSATIONS.values():
        try:
            prompt = s.render(conv)
        except TemplateError:  # a template without a system turn (its refusal is checked above)
            continue
        check = s.check_tokenizer(prompt)
        assert check.backend_ids == vocab_only.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        assert check.source_ids == s.encode_chat(conv)
        assert check.identical, check.describe()
    s.chat(CONVERSATIONS["single"], max_new_tokens=1)
    assert s.last_tokenizer_check is not None and s.last_tokenizer_check.identical


def test_tokenizer_difference_is_reported(sessions):
    """A backend tokenizer that disagrees is named, with the first differing position."""
    s = sessions("ocelot-mini", "gguf:F16")
    original = s._backend.own_tokenize
    try:
        s._backend.own_tokenize = lambda text: [1, 1] + original(text)[1:]  # a llama.cpp that doubles BOS
        prompt = s.render(CONVERSATIONS["single"])
        check = s.check_tokenizer(prompt)
        assert not check.identical and check.first_difference == 1
        assert "differently" in check.describe() and "koquant feeds the source ids" in check.describe()
        s.chat(CONVERSATIONS["single"], max_new_tokens=1)
        assert any("differently" in n for n in s.notes)
    finally:
        s._backend.own_tokenize = original
        s.notes[:] = [n for n in s.notes if "differently" not in n]


# ---------------------------------------------------------------------------- greedy continuations
def _hf_greedy(model, ids: list[int], stop: set[int], repetition_penalty: float, n: int) -> list[int]:
    import torch
    from transformers import GenerationConfig

    cfg = GenerationConfig(do_sample=False, max_new_tokens=n, repetition_penalty=repetition_penalty,
                           eos_token_id=sorted(stop), pad_token_id=min(stop))
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             generation_config=cfg)
    new = out[0, len(ids):].tolist()
    return new[:-1] if new and new[-1] in stop else new


@pytest.mark.parametrize("conv", ["single", "3-turn+system"])
@pytest.mark.family_backends(MATRIX)
def test_greedy_32_tokens_equal_transformers_generate(family, backend, conv, sessions, hf_reference):
    s = sessions(family, backend)
    tok, model = hf_reference(family)
    if _refuses(tok, CONVERSATIONS[conv]):
        conv = "single"  # the family's template has no system turn (checked above): greedy on the single turn
    _, ids = _hf_prompt(tok, CONVERSATIONS[conv])
    want = _hf_greedy(model, ids, set(s.stop_ids), s.defaults.repetition_penalty, 32)
    assert want, "the reference produced nothing to compare"
    got = s.generate(ids, temperature=0, max_new_tokens=32)
    assert got == want
    assert s.last.stop_reason == ("max_new_tokens" if len(want) == 32 else "stop_token")
    text = s.chat(CONVERSATIONS[conv], temperature=0, max_new_tokens=32)
    assert text == tok.decode(want, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@pytest.mark.family_backends(EXPORTS)
def test_seeded_sampling_means_the_same_on_every_backend(family, backend, sessions):
    """Same seed, same parameters: each backend draws the same uniform numbers through the same
    sampler, so on an unquantized export the sampled tokens are the source's, except where a draw
    lands within the export's tiny logit difference of a boundary between two tokens (which are then
    neighbours in the candidate list)."""
    hf, other = sessions(family, "hf"), sessions(family, backend)
    ids = hf.encode_chat(CONVERSATIONS["single"])
    params = dict(temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.1, max_new_tokens=24)
    p = hf.defaults.with_overrides(**params)
    outs, steps, boundary = [], 0, 0
    for seed in (1, 2, 3):
        seq = hf.generate(ids, seed=seed, **params)
        assert hf.generate(ids, seed=seed, **params) == seq  # reproducible
        outs.append(seq)
        rows_hf, rows_other = hf.logits(ids + seq), other.logits(ids + seq)
        a, b = Sampler(p.with_overrides(seed=seed), ids), Sampler(p.with_overrides(seed=seed), ids)
        for i, tok in enumerate(seq):
            row = len(ids) - 1 + i
            cand_a, cand_b = a.select(rows_hf[row])[0], b.select(rows_other[row])[0]
            got_a, got_b = a(rows_hf[row]), b(rows_other[row])
            assert got_a == tok
            steps += 1
            if got_b != got_a:
                boundary += 1
                union = np.union1d(cand_a, cand_b).tolist()
                assert abs(union.index(got_a) - union.index(got_b)) == 1, (seed, i, got_a, got_b)
            a.observe((tok,))
            b.observe((tok,))
    assert boundary <= max(1, steps // 20), f"{boundary} of {steps} draws differ"
    assert len({tuple(o) for o in outs}) > 1, "different seeds should sample differently"


# ---------------------------------------------------------------------------- sampling semantics
def _hf_processed(logits: np.ndarray, history: list[int], p: SamplingParams) -> np.ndarray:
    import torch
    from transformers.generation.logits_process import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    procs = LogitsProcessorList()
    if p.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
    if p.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(p.temperature))
    if p.top_k:
        procs.append(TopKLogitsWarper(p.top_k))
    if p.top_p < 1.0:
        procs.append(TopPLogitsWarper(p.top_p))
    out = procs(torch.tensor([history]), torch.tensor(logits[None], dtype=torch.float64))
    return out[0].numpy()


@pytest.mark.parametrize("params", [
    dict(temperature=0.7, top_k=50, top_p=1.0),
    dict(temperature=1.0, top_k=0, top_p=0.9),
    dict(temperature=0.1, top_k=50, top_p=0.95, repetition_penalty=1.2),  # gemma-ko-2b's card
    dict(temperature=0.8, top_k=100, top_p=0.8),  # komt's card
    dict(temperature=1.3, top_k=7, top_p=0.5, repetition_penalty=0.8),
    dict(temperature=0.6, top_k=0, top_p=0.99, repetition_penalty=1.3),
])
def test_sampler_means_what_transformers_means(params):
    rng = np.random.default_rng(0)
    p = SamplingParams(do_sample=True, **params)
    for trial in range(24):
        vocab = (3000, 5000, 50000)[trial % 3]  # the small-vocabulary and the large-vocabulary top-p paths
        logits = rng.normal(0, 3, size=vocab).astype(np.float32)
        history = rng.integers(0, vocab, size=30).tolist()
        sampler = Sampler(p, history)
        ids, vals = sampler.select(logits)
        ref = _hf_processed(logits.astype(np.float64), history, p)
        kept = np.flatnonzero(np.isfinite(ref))
        assert ids.tolist() == kept.tolist(), (params, trial)
        ours = np.exp(vals - vals.max())
        theirs = np.exp(ref[kept] - ref[kept].max())
        np.testing.assert_allclose(ours / ours.sum(), theirs / theirs.sum(), rtol=1e-5)


def test_sampler_draws_follow_the_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.2, 1e-9]))
    sampler = Sampler(SamplingParams(do_sample=True, temperature=1.0, top_k=0, seed=3))
    counts = np.bincount([sampler(logits) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(counts[:3], [0.5, 0.3, 0.2], atol=0.015)
    greedy = Sampler(SamplingParams(do_sample=False, repetition_penalty=10.0), history=[0])
    assert greedy(logits) == 1  # the penalty pushed token 0 below token 1


def test_sampling_parameters_checked_on_every_backend(sessions):
    conv = CONVERSATIONS["single"]
    for b in MATRIX:
        s = sessions("komt-mini", b)
        with pytest.raises(SamplingError) as e:
            s.chat(conv, min_p=0.1, typical_p=0.5)
        assert "min_p, typical_p" in e.value.message and "top_p" in e.value.hint and "seed" in e.value.hint
        for bad in (dict(top_p=0.0), dict(top_p=1.5), dict(temperature=-1), dict(top_k=-1), dict(top_k=2.5),
                    dict(repetition_penalty=0), dict(max_new_tokens=-3), dict(seed="x")):
            with pytest.raises(SamplingError):
                s.generate([1, 2, 3], **bad)
        with pytest.raises(SamplingError):
            s.generate([1, 2, 3], stream=True, frequency_penalty=1.0)  # refused at the call, not on iteration


def test_defaults_come_from_generation_config(family, sessions, miniature):
    import json

    gen = json.loads((miniature(family) / "generation_config.json").read_text())
    for b in backends_of(family):
        d = sessions(family, b).defaults
        assert d.do_sample == gen.get("do_sample", False)
        assert d.temperature == gen.get("temperature", 1.0)
        assert d.top_k == gen.get("top_k", 50)
        assert d.top_p == gen.get("top_p", 1.0)
        assert d.repetition_penalty == gen.get("repetition_penalty", 1.0)
        assert d.max_new_tokens == gen["max_new_tokens"]
        # the EOS ids plus the end-of-turn marker the family's template writes (Gemma 2/3: <end_of_turn>)
        template = (miniature(family) / "chat_template.jinja").read_text(encoding="utf-8")
        markers = {sessions(family, "hf").tokenizer.token_id(m) for m in END_OF_TURN_MARKERS if m in template}
        eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
        assert sessions(family, b).stop_ids == set(eos) | (markers - {None})
    # an explicit temperature turns sampling on, temperature=0 is greedy
    assert d.with_overrides(temperature=0.5).do_sample and d.with_overrides(temperature=0).greedy


def test_end_of_turn_markers_stop_when_the_template_uses_them(miniature):
    tpl = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
           "{{ m['content'] }}<|eot_id|>{% endfor %}<|start_header_id|>assistant<|end_header_id|>\n\n")
    with load(miniature("llama3-ko-mini"), chat_template=tpl) as s:
        assert s.stop_ids == {128001, 128009}
        assert s.encode_chat(CONVERSATIONS["single"])[0] == 128000
    with load(miniature("llama3-ko-mini")) as s:
        assert s.stop_ids == {128001}


# ---------------------------------------------------------------------------- the generation loop
class ScriptedBackend(Backend):
    """Logits that put all mass on a scripted token at each position: tests the loop itself."""

    name, format, n_vocab, n_ctx = "scripted", "test", 16, 12

    def __init__(self, script):
        self.script, self.n = list(script), 0
        self.fed: list[list[int]] = []

    def _peak(self):
        out = np.full(self.n_vocab, -10.0, dtype=np.float32)
        out[self.script[min(self.n - 1, len(self.script) - 1)]] = 10.0
        return out

    def forward(self, ids):
        self.fed.append(list(ids))
        self.n += len(ids)
        return self._peak()

    def rewind(self, n):
        self.n = min(self.n, n)
        return self.n

    def all_logits(self, ids):
        raise NotImplementedError

    threads = 1

    def model_bytes(self):
        return 0


def _scripted_session(miniature, script):
    tok = HFTokenizer(miniature("ocelot-mini"))
    return Session(ScriptedBackend(script), tok, path=miniature("ocelot-mini"), chat_template=None,
                   generation_config={"eos_token_id": 2, "max_new_tokens": 8})


def test_generation_stops_at_stop_tokens_and_limits(miniature):
    # position i (1-based count of tokens seen) -> next token script[i-1]; prompt of 3 tokens
    s = _scripted_session(miniature, [0, 0, 5, 6, 2, 7, 8, 9, 10, 11, 12, 13])
    assert s.generate([1, 3, 4]) == [5, 6]
    assert s.last.stop_reason == "stop_token" and s.last.new_tokens == 2
    assert s.generate([1, 3, 4], ignore_eos=True, max_new_tokens=4) == [5, 6, 2, 7]
    assert s.last.stop_reason == "max_new_tokens"
    assert s.generate([1, 3, 4], ignore_eos=True, max_new_tokens=100) == [5, 6, 2, 7, 8, 9, 10, 11, 12]
    assert s.last.stop_reason == "context"  # n_ctx=12
    with pytest.raises(ContextLengthError):
        s.generate(list(range(12)))
    assert s.generate([1, 3, 4], max_new_tokens=0) == [] and s.last.stop_reason == "max_new_tokens"


def test_kv_cache_prefix_is_reused(miniature):
    s = _scripted_session(miniature, [0] * 4 + [5, 2] + [0] * 10)
    s.generate([1, 3, 4, 9], max_new_tokens=1)
    b = s._backend
    assert b.fed[-1] == [1, 3, 4, 9]
    s.generate([1, 3, 4, 9, 5, 7], max_new_tokens=1)
    assert b.fed[-1] == [5, 7] and s.last.reused_tokens == 4
    s.generate([1, 3, 4, 9, 5, 7], max_new_tokens=1)  # identical prompt: one token re-fed for fresh logits
    assert b.fed[-1] == [7] and s.last.reused_tokens == 5
    s.generate([1, 8], max_new_tokens=1)
    assert b.fed[-1] == [8] and s.last.reused_tokens == 1


def test_an_older_stream_stops_when_a_new_generation_starts(miniature):
    s = _scripted_session(miniature, [0, 0, 5, 6, 7, 8, 9, 10, 11])
    first = s.generate([1, 3, 4], stream=True, ignore_eos=True)
    assert next(first) == 5
    assert s.generate([1, 3], max_new_tokens=1)
    with pytest.raises(Exception, match="another generation"):
        next(first)
    second = s.generate([1, 3, 4], stream=True, ignore_eos=True)
    assert next(second) == 5
    s.reset()  # reset (or logits/next_logits) also takes the KV cache away from a running stream
    with pytest.raises(Exception, match="another generation"):
        next(second)


@pytest.mark.parametrize("backend", MATRIX)
def test_cached_logits_equal_fresh_logits(backend, sessions):
    s = sessions("gemma-ko-mini", backend)
    s.chat(CONVERSATIONS["single"], max_new_tokens=4, temperature=0)
    later = s.encode_chat(CONVERSATIONS["3-turn"])
    cached = s.next_logits(later)  # after the single-turn chat: its prefix comes from the KV cache
    fresh = s.logits(later)
    assert fresh.shape == (len(later), s.n_vocab)
    np.testing.assert_allclose(cached, fresh[-1], atol=2e-3)
    s.reset()
    np.testing.assert_allclose(s.next_logits(later), fresh[-1], atol=2e-3)


# ---------------------------------------------------------------------------- text
KOREAN = ("대한민국은 민주공화국이다. 똠얌꿍과 뷁, 쀍, 홟 같은 드문 음절 🍜🇰🇷 그리고 English words, "
          "숫자 2024년 3월 1일.\n  줄바꿈 뒤 공백")


def test_streamed_pieces_never_split_a_character(family, sessions):
    s = sessions(family, "hf")
    ids = s.tokenize(KOREAN, add_special_tokens=False)
    dec = StreamDecoder(s.tokenizer)
    pieces, withheld = [], 0
    for t in ids:
        piece = dec.push(t)
        withheld += piece == ""
        pieces.append(piece)
    pieces.append(dec.flush())
    assert "".join(pieces) == s.detokenize(ids) == KOREAN
    assert not any("\ufffd" in p for p in pieces)
    assert withheld > 0  # some characters really arrived in several tokens (byte fallback / byte-level BPE)


@pytest.mark.parametrize("backend", MATRIX)
def test_stream_equals_full_text(backend, sessions):
    s = sessions("llama3-ko-mini", backend)
    conv = CONVERSATIONS["3-turn"]
    pieces = list(s.chat(conv, stream=True, seed=5, temperature=1.2, max_new_tokens=40))
    assert "".join(pieces) == s.chat(conv, seed=5, temperature=1.2, max_new_tokens=40)
    assert s.last.new_tokens > 0


def test_bos_is_never_doubled(miniature):
    doubled = "{{ bos_token }}{{ bos_token }}{% for m in messages %}Human: {{ m['content'] }}\n{% endfor %}Assistant:\n"
    with load(miniature("ocelot-mini"), chat_template=doubled) as s:
        ids = s.encode_chat(CONVERSATIONS["single"])
        assert ids[0] == 1 and ids[1] != 1
        assert any("BOS more than once" in n for n in s.notes)


# ---------------------------------------------------------------------------- loading
def test_load_chooses_backend_and_file(gguf_exports, miniature, tmp_path):
    art = gguf_exports("synatra-mini")
    with pytest.raises(LoadError) as e:
        load(art.path)
    assert "F16, Q8_0, Q4_K_M" in e.value.message and "quant=" in e.value.hint
    with pytest.raises(LoadError, match="has no Q2_K"):
        load(art.path, quant="Q2_K")
    with load(art.path, quant="q4_k_m", threads=1) as s:
        assert (s.format, s.backend, s.quant, s.path.name) == ("gguf", "llama.cpp", "Q4_K_M", "synatra-mini-Q4_K_M.gguf")
        assert s.tokenizer.source == str((art.path / "tokenizer").resolve())
        assert s.chat_template == art.manifest["chat_template"]["template"]
        info = s.info()
        assert info["threads"] == 1 and info["memory"]["model_bytes"] > 0 and info["memory"]["rss_bytes"] > 0
    # the .gguf inside the artifact finds its tokenizer/ and koquant.json
    with load(art.path / "synatra-mini-Q8_0.gguf", threads=1) as s:
        assert s.quant == "Q8_0" and s.manifest is not None and s.tokenizer.source.endswith("tokenizer")
    with load(miniature("synatra-mini")) as s:
        assert (s.format, s.backend) == ("hf", "transformers")
    with pytest.raises(LoadError, match="not supported by the llama.cpp backend"):
        load(art.path, quant="F16", dtype="bfloat16")
    with pytest.raises(LoadError, match="does not exist"):
        load(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LoadError, match="not a model"):
        load(tmp_path / "notes.txt")


def test_bare_gguf_uses_its_own_tokenizer_and_template(gguf_exports, sessions, tmp_path):
    """A GGUF koquant did not make (no koquant.json, no tokenizer/): the file's own template and vocab."""
    art = gguf_exports("komt-mini")
    bare = tmp_path / "komt.gguf"
    os.link(art.path / "komt-mini-F16.gguf", bare)
    with load(bare, threads=1) as s:
        assert s.manifest is None and "llama.cpp's tokenizer" in s.tokenizer.source
        assert any("parity with the source model is not guaranteed" in n for n in s.notes)
        assert s.chat_template == art.manifest["chat_template"]["template"]
        src = sessions("komt-mini", "hf")
        for conv in CONVERSATIONS.values():
            assert s.render(conv) == src.render(conv)
            assert s.encode_chat(conv) == src.encode_chat(conv)
        ids = src.encode_chat(CONVERSATIONS["single"])
        assert s.generate(ids, temperature=0, max_new_tokens=16) == src.generate(ids, temperature=0, max_new_tokens=16)
        assert s.stop_ids >= {2}


def test_formats_recognised_from_files(miniature, tmp_path):
    import json
    import shutil

    src = miniature("ocelot-mini")
    gptq = tmp_path / "gptq"
    gptq.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (gptq / "config.json").write_text(json.dumps(cfg))
    shutil.copy(src / "tokenizer.json", gptq)
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "genai_config.json").write_text("{}")
    from koquant.runtime.loader import resolve

    assert resolve(gptq).format == "gptq"
    assert resolve(onnx).format == "onnx"
    assert resolve(src).format == "hf"
    for folder, fmt in ((gptq, "gptq"), (onnx, "onnx")):
        if fmt not in available_backends():
            with pytest.raises(LoadError, match="no runtime for"):
                load(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LoadError, match="holds no model"):
        load(empty)


def test_chat_needs_a_template(miniature):
    with load(miniature("ocelot-mini")) as s:
        s.chat_template = None
        with pytest.raises(TemplateError, match="no chat template"):
            s.chat(CONVERSATIONS["single"])


def test_importing_the_runtime_stays_lean():
    code = ("import sys, koquant; koquant.load; import koquant.runtime, koquant.cli.chat; "
            "print([m for m in ('torch', 'transformers', 'llama_cpp', 'onnxruntime_genai') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
