"""What koquant checks in an ONNX export besides logits: greedy decoding, tokenizer and template parity.

onnxruntime-genai ships its own tokenizer (onnxruntime-extensions, reading tokenizer.json) and
its own chat-template engine (minja). Neither is the source's: where they disagree with
transformers, koquant records how, so a runtime can feed the source tokenizer's ids itself.
"""

from __future__ import annotations

# a fixed Korean conversation, rendered by both template engines
PARITY_MESSAGES = (
    {"role": "user", "content": "다음 회의록을 요약해 주세요.\n[안건: 예산 심의]"},
    {"role": "assistant", "content": "예산 심의 안건이 논의되었습니다."},
    {"role": "user", "content": "고맙습니다. 한 문장으로 다시 써 주세요."},
)
ROUTE = ("tokenize with the source tokenizer (tokenizer.json through transformers) and feed the ids to the model; "
         "render prompts with the chat template through jinja2")


def greedy_agreement(layerwise, prompt: list[int], continuation: list[int]) -> int:
    """How many tokens of ``continuation`` (a runtime's greedy continuation of ``prompt``) the source model
    itself would have chosen greedily: the source's argmax after every prefix, all in one layerwise pass
    (teacher forcing), so the whole model never has to be in memory. Equal to running the source greedily
    and comparing, up to the first difference."""
    import numpy as np

    if not continuation:
        return 0
    logits = layerwise.logits([list(prompt) + list(continuation)])[0]
    choice = np.argmax(logits[len(prompt) - 1: len(prompt) - 1 + len(continuation)], axis=-1)
    n = 0
    for want, got in zip(choice, continuation):
        if int(want) != int(got):
            break
        n += 1
    return n


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenizer_parity(og_tokenizer, text: str, source_ids: list[int], bos_id: int | None) -> dict:
    """How the runtime's tokenizer encodes ``text`` compared with the source tokenizer's ``source_ids``."""
    raw = [int(t) for t in og_tokenizer.encode(text)]
    adds_bos = bool(raw) and bos_id is not None and raw[0] == bos_id
    ids = raw if adds_bos or bos_id is None else [bos_id, *raw]
    same = ids == source_ids
    record = {
        "runtime_ids_identical": same,
        "runtime_adds_bos": adds_bos,
        "prepend_bos": bos_id is not None and not adds_bos,
        "source_tokens": len(source_ids),
        "runtime_tokens": len(ids),
    }
    if not same:
        i = common_prefix(ids, source_ids)
        record["first_difference"] = {"position": i, "source": source_ids[max(0, i - 2):i + 6],
                                      "runtime": ids[max(0, i - 2):i + 6]}
        record["route"] = ROUTE
    return record


def template_parity(og_tokenizer, template: str | None, bos_token: str | None, eos_token: str | None) -> dict:
    """Whether the runtime's template engine renders the source template like jinja2 does."""
    import json

    from ...source.chat_template import render_chat

    if template is None:
        return {"template": None}
    want = render_chat(template, list(PARITY_MESSAGES), bos_token=bos_token, eos_token=eos_token,
                       add_generation_prompt=True)
    try:
        got = og_tokenizer.apply_chat_template(json.dumps(list(PARITY_MESSAGES), ensure_ascii=False),
                                               template_str=template, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - minja's failures are what we record
        return {"runtime_renders_identical": False, "error": f"{type(e).__name__}: {e}"[:300], "route": ROUTE}
    record = {"runtime_renders_identical": got == want}
    if got != want:
        i = common_prefix(list(got), list(want))
        record.update(first_difference={"position": i, "source": want[max(0, i - 10):i + 30],
                                        "runtime": got[max(0, i - 10):i + 30]}, route=ROUTE)
    return record
