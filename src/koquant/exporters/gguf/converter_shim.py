"""Runs the pinned ``convert_hf_to_gguf.py`` with one fallback: a BPE pre-tokenizer known by its rules.

llama.cpp's converter names a BPE tokenizer's pre-tokenizer by hashing how it splits a fixed text
(``get_vocab_base_pre``) and refuses any hash it has not recorded ("BPE pre-tokenizer was not
recognized"). The hash depends on the vocabulary too, so a fine-tune whose vocabulary was extended
with Korean tokens - common for Korean models - is refused although its pre-tokenizer is one
llama.cpp implements. Here, when the hash is unknown, the converter's ``tokenizer.ggml.pre`` is
chosen from the pre-tokenizer ``tokenizer.json`` declares, when that is exactly one llama.cpp
implements (:data:`KNOWN_SPLITS`); anything else still fails as before. Whether the choice is right
is then checked like every export: the validation gate compares llama.cpp's token ids with the
source tokenizer's on the held-out text and the chat prompts.

Usage (as the converter): ``python converter_shim.py LLAMA_CPP_DIR MODEL_DIR --outfile ... --outtype ...``
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
#: the Split regex of a tokenizer.json (followed by a ByteLevel step without its own regex) -> llama.cpp's name
KNOWN_SPLITS = {
    # Llama 3 (and Llama 3 based Korean fine-tunes)
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    # Qwen 2 / 2.5 / 3
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
    # GPT-2's own, written out (EXAONE 4 and others), as tokenizers and as llama.cpp spell it
    _GPT2_REGEX: "gpt-2",
    _GPT2_REGEX.removesuffix(r"|\s+"): "gpt-2",
}


def pre_tokenizer_name(model_dir: Path) -> str | None:
    """llama.cpp's name for the pre-tokenizer ``model_dir/tokenizer.json`` declares, or None."""
    try:
        pre = json.loads((Path(model_dir) / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer")
    except (OSError, ValueError):
        return None
    steps = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and isinstance(steps[0], dict) and steps[0].get("type") == "ByteLevel":
        return "gpt-2" if steps[0].get("use_regex", True) else None  # ByteLevel's own regex is GPT-2's
    if len(steps) != 2 or not all(isinstance(s, dict) for s in steps):
        return None
    split, byte_level = steps
    if split.get("type") != "Split" or byte_level.get("type") != "ByteLevel" or byte_level.get("use_regex", True):
        return None
    if split.get("behavior") != "Isolated" or split.get("invert"):
        return None
    return KNOWN_SPLITS.get((split.get("pattern") or {}).get("Regex"))


def _patch(model_base) -> None:
    original = model_base.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            name = pre_tokenizer_name(self.dir_model)
            if name is None:
                raise
            print(f"koquant: the BPE pre-tokenizer hash is not one llama.cpp recorded; tokenizer.json declares "
                  f"the {name!r} pre-tokenizer, which is used", file=sys.stderr)
            return name

    model_base.get_vocab_base_pre = get_vocab_base_pre


def main(argv: list[str]) -> None:
    src = Path(argv[0])
    sys.path.insert(0, str(src))
    from conversion import base  # the vendored converter's package

    _patch(base.TextModel)
    sys.argv = [str(src / "convert_hf_to_gguf.py"), *argv[1:]]
    runpy.run_path(str(src / "convert_hf_to_gguf.py"), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
