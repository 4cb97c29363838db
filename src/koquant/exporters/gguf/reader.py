"""Read a GGUF file's header: its metadata and the name, type, shape and size of each tensor.

Pure Python (``struct`` over a read-only ``mmap``), no llama.cpp. Every length and count in
the header is checked against the bytes that remain in the file before it is used, so a
corrupt or hostile header gives a :class:`~koquant.errors.CheckpointError` instead of a huge
allocation or an endless loop. Tensor data is never read.

Layout (GGUF v2/v3, little-endian): ``"GGUF"``, version u32, tensor count u64, key/value
count u64; the key/value pairs (key string, value type u32, value); per tensor its name,
dimension count u32, dimensions u64 each (ggml order), type u32 and data offset u64; then
padding to ``general.alignment`` (32 by default) and the tensor data.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from koquant.errors import CheckpointError
from koquant.quant_recipes.gguf import GGML_TYPES_BY_ID
from koquant.source.architectures import GGUF_EMBED

__all__ = ["GGUFTensor", "GGUFTensorInfo", "GGUFArray", "GGUFFile", "read_gguf", "gguf_tensors", "not_a_model"]

_MAGIC = b"GGUF"
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NAME = 1024  # llama.cpp allows 63; be lenient with other writers, still bounded
_MAX_ARRAY_DEPTH = 4
_KEEP_ARRAY = 64  # arrays up to this many elements keep their values
_MAX_STRING = 64 * 1024 * 1024  # a metadata string koquant decodes (chat templates are a few KiB)

# value type id -> (struct format, size); 8 = string, 9 = array
_SCALARS = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    """A GGUF tensor, read or planned: ``shape`` in ggml order (``shape[0]`` = row length)."""

    name: str
    type: str
    shape: tuple[int, ...]
    n_bytes: int

    def as_tuple(self) -> tuple[str, str, tuple[int, ...], int]:
        return (self.name, self.type, self.shape, self.n_bytes)


@dataclass(frozen=True)
class GGUFTensorInfo(GGUFTensor):
    """One tensor of a file; ``offset`` absolute in the file."""

    offset: int


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array: its element type name, length, byte size, and values when short."""

    element_type: str
    count: int
    n_bytes: int
    values: tuple | None = None


@dataclass(frozen=True)
class GGUFFile:
    path: str
    version: int
    alignment: int
    metadata: dict[str, Any]
    kv_bytes: dict[str, int]
    tensors: list[GGUFTensorInfo]
    data_offset: int
    file_size: int
    tensor_data_bytes: int = field(default=0)
    kv_types: dict[str, str] = field(default_factory=dict)  # key -> its value type (u32, i32, string, array, ...)

    def tensor(self, name: str) -> GGUFTensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


_TYPE_NAMES = {
    0: "u8",
    1: "i8",
    2: "u16",
    3: "i16",
    4: "u32",
    5: "i32",
    6: "f32",
    7: "bool",
    8: "string",
    9: "array",
    10: "u64",
    11: "i64",
    12: "f64",
}


class _Cursor:
    def __init__(self, buf, size: int, path: str):
        self.buf, self.size, self.pos, self.path = buf, size, 0, path

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(
            f"{self.path} is not a valid GGUF file: {what} (at byte {self.pos} of {self.size})",
            hint="re-export the model; the file may be truncated or corrupt",
        )

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} needs {n} bytes but only {self.size - self.pos} remain")

    def unpack(self, fmt: str, n: int, what: str):
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.unpack("<I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("<Q", 8, what)

    def string(self, what: str, limit: int | None = None, fits_first: bool = False) -> str:
        n = self.u64(f"length of {what}")
        if fits_first:  # a length beyond the end of the file is reported as such, before the limit
            self.need(n, what)
        if limit is not None and n > limit:
            raise self.fail(f"{what} is {n} bytes long (limit {limit})")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", "replace")

    def skip_string(self, what: str) -> None:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        self.pos += n


def _value(cur: _Cursor, vtype: int, key: str, depth: int = 0):
    if vtype in _SCALARS:
        fmt, n = _SCALARS[vtype]
        return cur.unpack(fmt, n, f"value of {key}")
    if vtype == _STRING:
        return cur.string(f"value of {key}", limit=_MAX_STRING, fits_first=True)
    if vtype != _ARRAY:
        raise cur.fail(f"unknown value type {vtype} for key {key!r}")
    if depth >= _MAX_ARRAY_DEPTH:
        raise cur.fail(f"arrays nested deeper than {_MAX_ARRAY_DEPTH} in {key!r}")
    start = cur.pos - 4
    etype = cur.u32(f"element type of {key}")
    count = cur.u64(f"length of {key}")
    remaining = cur.size - cur.pos
    if etype in _SCALARS:
        fmt, n = _SCALARS[etype]
        if count > remaining // n:
            raise cur.fail(f"array {key!r} claims {count} elements of {n} bytes, more than the file holds")
        values = None
        if count <= _KEEP_ARRAY:
            values = struct.unpack_from(f"<{count}{fmt[1]}", cur.buf, cur.pos)
        cur.pos += count * n
    elif etype == _STRING:
        if count > remaining // 8:
            raise cur.fail(f"array {key!r} claims {count} strings, more than the file holds")
        if count <= _KEEP_ARRAY:
            values = tuple(cur.string(f"element of {key}", limit=_MAX_STRING, fits_first=True) for _ in range(count))
        else:
            values = None
            for _ in range(count):
                cur.skip_string(f"element of {key}")
    elif etype == _ARRAY:
        if count > remaining // 12:
            raise cur.fail(f"array {key!r} claims {count} arrays, more than the file holds")
        # an element of an array of arrays is (element type, count, elements), without a type tag;
        # long ones are walked without keeping their elements (memory stays bounded whatever the count)
        values = None
        if count <= _KEEP_ARRAY:
            values = tuple(_value(cur, _ARRAY, key, depth + 1) for _ in range(count))
        else:
            for _ in range(count):
                _value(cur, _ARRAY, key, depth + 1)
    else:
        raise cur.fail(f"unknown element type {etype} in array {key!r}")
    return GGUFArray(_TYPE_NAMES.get(etype, str(etype)), count, cur.pos - start, values)


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse the header of the GGUF file at ``path``.

    Raises :class:`CheckpointError` for a missing, truncated or malformed file.
    """
    p = Path(path)
    try:
        f = open(p, "rb")
    except OSError as e:
        raise CheckpointError(f"cannot open {p}: {e.strerror or e}", hint="check the path to the .gguf file") from e
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            head = f.read(4)
            if head[:4] != _MAGIC[: len(head)] or not head:
                raise CheckpointError(
                    f"{p} is not a GGUF file (no 'GGUF' magic)", hint="pass a .gguf file written by llama.cpp"
                )
            raise CheckpointError(
                f"{p} is truncated: {size} bytes, shorter than a GGUF header", hint="re-export the model"
            )
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, size, str(p))


def _parse(buf, size: int, path: str) -> GGUFFile:
    cur = _Cursor(buf, size, path)
    if bytes(buf[:4]) != _MAGIC:
        raise CheckpointError(
            f"{path} is not a GGUF file (no 'GGUF' magic)", hint="pass a .gguf file written by llama.cpp"
        )
    cur.pos = 4
    version = cur.u32("version")
    if version not in (2, 3):
        raise cur.fail(f"unsupported GGUF version {version} (koquant reads versions 2 and 3)")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("key/value count")
    remaining = size - cur.pos
    if n_kv > remaining // 13:
        raise cur.fail(f"header claims {n_kv} key/value pairs, more than the file can hold")
    if n_tensors > remaining // 24:
        raise cur.fail(f"header claims {n_tensors} tensors, more than the file can hold")

    metadata: dict[str, Any] = {}
    kv_bytes: dict[str, int] = {}
    kv_types: dict[str, str] = {}
    for _ in range(n_kv):
        start = cur.pos
        key = cur.string("metadata key", limit=_MAX_NAME)
        vtype = cur.u32(f"value type of {key!r}")
        metadata[key] = _value(cur, vtype, key)
        kv_types[key] = _TYPE_NAMES[vtype]
        kv_bytes[key] = cur.pos - start

    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment {alignment!r} is not a power of two")

    infos: list[tuple[str, int, tuple[int, ...], int]] = []
    seen: set[str] = set()
    for i in range(n_tensors):
        name = cur.string(f"name of tensor {i}", limit=_MAX_NAME)
        if name in seen:
            raise cur.fail(f"tensor {name!r} appears twice")
        seen.add(name)
        n_dims = cur.u32(f"dimension count of {name!r}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {_MAX_DIMS} allowed)")
        shape = tuple(cur.u64(f"dimension of {name!r}") for _ in range(n_dims))
        n_el = 1
        for d in shape:
            n_el *= d
        if n_el >= 1 << 62:
            raise cur.fail(f"tensor {name!r} has an impossible shape {shape}")
        type_id = cur.u32(f"type of {name!r}")
        offset = cur.u64(f"offset of {name!r}")
        infos.append((name, type_id, shape, offset))

    data_offset = -(-cur.pos // alignment) * alignment
    data_size = size - data_offset
    tensors: list[GGUFTensorInfo] = []
    total = 0
    for name, type_id, shape, offset in infos:
        t = GGML_TYPES_BY_ID.get(type_id)
        if t is None:
            raise cur.fail(f"tensor {name!r} has unknown ggml type id {type_id}")
        if shape[0] % t.block_size:
            raise cur.fail(
                f"tensor {name!r}: row length {shape[0]} is not a multiple of the {t.name} block size {t.block_size}"
            )
        rows = 1
        for d in shape[1:]:
            rows *= d
        n_bytes = rows * (shape[0] // t.block_size) * t.type_size
        if offset % alignment:
            raise cur.fail(f"tensor {name!r} starts at offset {offset}, not aligned to {alignment}")
        if offset + n_bytes > data_size:
            raise CheckpointError(
                f"{path} is truncated: tensor {name!r} needs bytes up to {data_offset + offset + n_bytes} "
                f"but the file is {size} bytes",
                hint="the download or export was cut short; export again",
            )
        total += n_bytes
        tensors.append(GGUFTensorInfo(name, t.name, shape, n_bytes, data_offset + offset))
    return GGUFFile(path, version, alignment, metadata, kv_bytes, tensors, data_offset, size, total, kv_types)


def not_a_model(gguf: GGUFFile) -> str | None:
    """Why a readable GGUF is not a model llama.cpp runs, or None for a model: llama-imatrix's importance
    matrix (``general.type`` imatrix), another kind of GGUF (an adapter, a projector), or a file without an
    architecture or without the token embedding every model has."""
    kind = gguf.metadata.get("general.type", "model")
    if kind == "imatrix":
        return "an importance matrix (general.type imatrix), not a model"
    if kind != "model":
        return f"a GGUF of general.type {kind!r}, not a model"
    if not gguf.metadata.get("general.architecture"):
        return "a GGUF without general.architecture, not a model"
    if not any(t.name == f"{GGUF_EMBED}.weight" for t in gguf.tensors):
        return f"a GGUF without a {GGUF_EMBED}.weight tensor, not a model"
    return None


def gguf_tensors(path: str | os.PathLike) -> list[tuple[str, str, tuple[int, ...], int]]:
    """``(name, type, shape, byte size)`` of every tensor in a GGUF file, in file order."""
    return [t.as_tuple() for t in read_gguf(path).tensors]
