"""Builders of hostile files: GGUF headers written byte by byte, and a pickle that runs a command."""

from __future__ import annotations

import struct
from pathlib import Path

# GGUF value types
U32, STRING, ARRAY, U64 = 4, 8, 9, 10


def _str(s: bytes | str, length: int | None = None) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b) if length is None else length) + b


def _value(vtype: int, value) -> bytes:
    if vtype == U32:
        return struct.pack("<I", value)
    if vtype == U64:
        return struct.pack("<Q", value)
    if vtype == STRING:
        return _str(value)
    if vtype == ARRAY:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(_value(etype, v) for v in items)
    raise ValueError(vtype)


def gguf_bytes(kv=(("general.architecture", STRING, "llama"), ("general.name", STRING, "hostile")),
               tensors=(("token_embd.weight", (32, 4), 0, 0),), data: bytes | None = None,
               version: int = 3, n_tensors: int | None = None, n_kv: int | None = None, raw_kv: bytes = b"") -> bytes:
    """A GGUF file: header, key/values (``raw_kv`` is appended verbatim), tensor infos, padding, data.

    ``tensors``: (name, ggml-order shape, ggml type id, offset); type 0 is F32.
    """
    out = b"GGUF" + struct.pack("<I", version)
    out += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors,
                       len(kv) + (1 if raw_kv else 0) if n_kv is None else n_kv)
    for key, vtype, value in kv:
        out += _str(key) + struct.pack("<I", vtype) + _value(vtype, value)
    out += raw_kv
    size = 0
    for name, shape, type_id, offset in tensors:
        out += _str(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", type_id, offset)
        n = 4
        for d in shape:
            n *= d
        size = max(size, offset + n)
    out += b"\0" * (-len(out) % 32)
    return out + (bytes(size) if data is None else data)


def huge_string_kv(key: str = "general.name", length: int = 2**62) -> bytes:
    """A string value that declares ``length`` bytes and holds five."""
    return _str(key) + struct.pack("<I", STRING) + _str(b"short", length=length)


def huge_array_kv(key: str = "tokenizer.ggml.token_type", count: int = 2**61) -> bytes:
    """A u32 array that declares ``count`` elements and holds two."""
    return _str(key) + struct.pack("<IIQ", ARRAY, U32, count) + struct.pack("<II", 1, 2)


def write_pickle_payload(path: Path, canary: Path) -> None:
    """A ``torch.save`` file that runs ``touch CANARY`` when unpickled without ``weights_only``."""
    import os

    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {canary}",))

    torch.save({"model.embed_tokens.weight": Payload()}, path)
