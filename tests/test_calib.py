"""The Korean calibration step: built-in sets, user text, chat rendering, chunking."""

from __future__ import annotations

import json

import pytest

from koquant.quant_recipes.calibration import (
    check_disjoint,
    chunk_tokens,
    korean_bills,
    korean_constitution,
    load_text_set,
    normalise,
)
from koquant.errors import CalibrationError
from koquant.testing.templates import KOMT


def test_builtin_sets_are_lf_korean_and_stable():
    bills, const = korean_bills(), korean_constitution()
    assert len(bills.documents) == 10
    for text in (bills.plain_text(), const.plain_text()):
        assert "\r" not in text
        assert sum("가" <= ch <= "힣" for ch in text) > 10_000
    assert "대한민국헌법" in const.plain_text()
    assert bills.sha256 == korean_bills().sha256 != const.sha256
    check_disjoint(bills, const)  # the default calibration never overlaps held-out text


def test_normalise_crlf():
    assert normalise("\ufeff가\r\n나\r다\n\n") == "가\n나\n다\n"


def test_user_text_file_dir_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("첫 문서\r\n둘째 줄", encoding="utf-8")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.jsonl").write_text(
        "\n".join(json.dumps(o, ensure_ascii=False) for o in (
            {"text": "셋째 문서"},
            {"messages": [{"role": "user", "content": "질문"}, {"role": "assistant", "content": "답"}]},
            {"prompt": "요약해줘", "response": "요약"},
        )), encoding="utf-8")
    (sub / "ignored.bin").write_bytes(b"\0\1")
    ts = load_text_set(tmp_path)
    assert ts.documents[0] == "첫 문서\n둘째 줄\n"
    assert ts.documents[1] == "셋째 문서\n"
    assert ts.documents[2][1] == {"role": "assistant", "content": "답"}
    assert ts.documents[3][0] == {"role": "user", "content": "요약해줘"}
    assert load_text_set(tmp_path / "a.txt").documents == ("첫 문서\n둘째 줄\n",)
    assert load_text_set("default") == korean_bills()


@pytest.mark.parametrize("content,message", [
    (b"\xff\xfe\x00bad", "is not UTF-8"),
    (b"{not json}\n", "is not valid JSON"),
    (b'{"foo": 1}\n', "expected an object with 'text'"),
    (b"   \n", "is empty"),
])
def test_bad_user_text(tmp_path, content, message):
    p = tmp_path / ("x.jsonl" if b"{" in content else "x.txt")
    p.write_bytes(content)
    with pytest.raises(CalibrationError, match=message):
        load_text_set(p)


def test_chat_rendering_uses_the_models_template():
    ts = load_text_set("default")
    text = ts.chat_text(KOMT, "<s>", "</s>")
    assert text.startswith("<s>[INST]")
    assert text.count("[/INST]") >= 10
    assert "\r" not in text


def test_overlap_with_heldout_refused():
    from koquant.quant_recipes.calibration import TextSet

    leak = TextSet("leaky", (korean_bills().documents[0] + korean_constitution().plain_text()[:2000],))
    with pytest.raises(CalibrationError, match="overlaps the held-out"):
        check_disjoint(leak, korean_constitution())


def test_chunks_start_with_bos_like_llama_cpp():
    c = chunk_tokens(list(range(10, 1010)), 128, 3, bos_id=1)
    assert len(c.ids) == 3 and all(len(x) == 128 and x[0] == 1 for x in c.ids)
    assert c.ids[1][1:] == tuple(range(10 + 129, 10 + 256))
    assert chunk_tokens(list(range(1000)), 128, None, None).ids[0][0] == 0
    with pytest.raises(CalibrationError, match="fewer than one chunk"):
        chunk_tokens([1, 2, 3], 128, None, 1)
