"""Bounded, allocation-safe reading of safetensors headers, and a streaming writer.

The header is read and checked before any backend touches the file, so a corrupt or
truncated file gets one clear message instead of a crash or a giant allocation.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_DIMS = 8

DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    offset: int = 0  # where its data starts in the file


#: numpy dtype name -> safetensors dtype, for the arrays :func:`write_safetensors` writes
NUMPY_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
                "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Return the tensors a safetensors file declares, after checking every offset."""
    return read_safetensors(path)[0]


def read_safetensors(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(the tensors a safetensors file declares, its ``__metadata__``), after checking every offset."""
    path = Path(path)
    size = path.stat().st_size
    bad = f"{path.name} is not a valid safetensors file"
    redo = "re-download or re-save the weights (e.g. model.save_pretrained(..., safe_serialization=True))"
    if size < 8:
        raise CheckpointError(f"{bad}: only {size} bytes (truncated)", hint=redo)
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8 or header_len > MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{bad}: header declares {header_len} bytes but the file has {size - 8} after the length "
                "(corrupt header or truncated file)",
                hint=redo,
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{bad}: header is not JSON ({e.__class__.__name__})", hint=redo) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{bad}: header is not a JSON object", hint=redo)
    data_len = size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    end_max = 0
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{bad}: __metadata__ is not a map of strings", hint=redo)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = info["dtype"]
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
            if not all(_is_int(x) for x in (*shape, begin, end)) or len(shape) > MAX_DIMS:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{bad}: tensor {name!r} has a malformed entry", hint=redo) from None
        if dtype not in DTYPE_BYTES or any(d < 0 for d in shape):
            raise CheckpointError(f"{bad}: tensor {name!r} has dtype {dtype!r} / shape {shape}", hint=redo)
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        if not (0 <= begin <= end) or end - begin != nbytes:
            raise CheckpointError(f"{bad}: tensor {name!r} offsets do not match its shape", hint=redo)
        if end > data_len:
            raise CheckpointError(
                f"{path.name} is truncated: tensor {name!r} ends at byte {end} but the file holds {data_len} data bytes",
                hint=redo,
            )
        end_max = max(end_max, end)
        spans.append((begin, end, name))
        tensors[name] = TensorInfo(name, dtype, shape, nbytes, 8 + header_len + begin)
    spans.sort()
    for (_, prev_end, prev), (begin, _, name) in zip(spans, spans[1:]):
        if begin < prev_end:
            raise CheckpointError(f"{bad}: tensors {prev!r} and {name!r} overlap in the data", hint=redo)
    if end_max != data_len:
        raise CheckpointError(
            f"{bad}: the header accounts for {end_max} data bytes but the file holds {data_len}",
            hint=redo,
        )
    return tensors, metadata


def write_safetensors(path: Path, arrays: dict, metadata: dict[str, str] | None = None,
                      block_bytes: int = 1 << 24) -> None:
    """Write numpy ``arrays`` (memory-mapped ones too: they are streamed in blocks of rows) as a safetensors
    file, in the order given, with ``metadata`` as its ``__metadata__``."""
    header: dict = {}
    offset = 0
    for name, a in arrays.items():
        if a.dtype.name not in NUMPY_DTYPES:
            raise ValueError(f"{name}: numpy dtype {a.dtype} has no safetensors dtype")
        header[name] = {"dtype": NUMPY_DTYPES[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors' own writer pads it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays.values():
            for block in row_blocks(a, block_bytes):
                f.write(block.astype(block.dtype.newbyteorder("<"), copy=False).tobytes())


def row_blocks(a, block_bytes: int = 1 << 24):
    """``a`` as C-contiguous blocks of whole rows of about ``block_bytes`` each (a scalar or empty array: one)."""
    import numpy as np

    if a.ndim == 0 or len(a) == 0:
        yield np.ascontiguousarray(a)
        return
    step = max(1, block_bytes // max(1, a[0].nbytes))
    for s in range(0, len(a), step):
        yield np.ascontiguousarray(a[s:s + step])


def open_memmap(path: Path, info: TensorInfo):
    """The tensor ``info`` of the file ``path`` (as :func:`read_safetensors` read it), memory-mapped read-only."""
    import numpy as np

    names = {v: k for k, v in NUMPY_DTYPES.items()}
    if info.dtype not in names:
        raise ValueError(f"{info.name}: safetensors dtype {info.dtype} has no numpy dtype here")
    dtype = np.dtype(names[info.dtype]).newbyteorder("<")
    if info.nbytes == 0:
        return np.empty(info.shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=info.offset, shape=info.shape)
