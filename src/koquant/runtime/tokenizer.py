"""The source model's tokenizer, and streaming detokenization.

Every backend is fed the ids the *source* tokenizer produces (transformers'
``AutoTokenizer`` loaded from the HF folder, or from an artifact's ``tokenizer/`` copy), so a
prompt means the same ids whatever runtime runs it. :class:`StreamDecoder` turns ids into
text pieces as they are generated without ever emitting half of a Korean syllable: byte
fallback (``<0xEC><0x95><0x88>``) and byte-level BPE both produce a replacement character
until the last byte of the character has arrived, and nothing is emitted until then.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from ..errors import CheckpointError


class TextTokenizer:
    """What a Session needs from a tokenizer. ``source`` says where its rules come from."""

    source: str = ""
    chat_template: str | None = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` with special tokens left out."""
        raise NotImplementedError

    def token_id(self, token: str) -> int | None:
        raise NotImplementedError

    @property
    def special_tokens(self) -> dict[str, str]:
        """Template variables such as ``bos_token``, as transformers passes them."""
        raise NotImplementedError

    @property
    def eos_token_id(self) -> int | None:
        raise NotImplementedError

    @property
    def bos_token_id(self) -> int | None:
        raise NotImplementedError

    @property
    def extra_stop_ids(self) -> set[int]:
        """Stop tokens the tokenizer knows beyond EOS (llama.cpp's end-of-turn token)."""
        return set()

    @cached_property
    def adds_bos(self) -> bool:
        """Whether plain ``encode(text, add_special_tokens=True)`` puts BOS in front."""
        ids = self.encode("가", add_special_tokens=True)
        return self.bos_token_id is not None and bool(ids) and ids[0] == self.bos_token_id


class HFTokenizer(TextTokenizer):
    """transformers' ``AutoTokenizer`` for a folder (never remote code)."""

    def __init__(self, folder: Path):
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"could not load the tokenizer in {folder}: {e}",
                                  hint="the folder needs tokenizer.json or tokenizer.model and tokenizer_config.json") from None
        self.source = str(folder)
        self.chat_template = self.tok.chat_template if isinstance(self.tok.chat_template, str) else None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.tok(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    @cached_property
    def _vocab(self) -> dict[str, int]:
        return self.tok.get_vocab()

    def token_id(self, token: str) -> int | None:
        return self._vocab.get(token)

    @property
    def special_tokens(self) -> dict[str, str]:
        return dict(self.tok.special_tokens_map)

    @property
    def eos_token_id(self) -> int | None:
        return self.tok.eos_token_id

    @property
    def bos_token_id(self) -> int | None:
        return self.tok.bos_token_id


class StreamDecoder:
    """Incremental detokenization: ``push(id)`` returns the new text, possibly empty.

    The text of a window of recent ids is compared with the text of the same window minus
    the newest ids; the difference is emitted once it does not end in a replacement character.
    The pieces joined equal ``tokenizer.decode(all ids)``.
    """

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # start of the window
        self._read = 0  # ids up to here have been emitted

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix:self._read]) if self._read > self._prefix else ""
        now = decode(self.ids[self._prefix:])
        if len(now) <= len(before) or now.endswith("\ufffd") or not now.startswith(before):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return now[len(before):]

    def flush(self) -> str:
        """Whatever is left (e.g. an incomplete byte sequence at the very end)."""
        if self._read == len(self.ids):
            return ""
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix:self._read]) if self._read > self._prefix else ""
        now = decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return now[len(before):] if now.startswith(before) else now
