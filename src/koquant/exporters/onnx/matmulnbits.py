"""Reading onnxruntime MatMulNBits graphs the builder wrote: their storage types, and the int4 codes of its
own round-to-nearest graph (what ``int4_gptq.rtn`` reproduces exactly).

Layout (com.microsoft MatMulNBits, bits=4, no zero-point input): for a weight of N output rows and
K input columns, ``B`` is uint8 [N, K / block, block / 2] with two codes per byte, the even column
in the low nibble; ``scales`` is float [N, K / block]; the zero point is 8.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import ExportError
from ...source.architectures import OnnxNames

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


def unpack(packed: np.ndarray) -> np.ndarray:
    n, blocks, half = packed.shape
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, blocks * half * 2)


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def layer_weight_nodes(model, names: OnnxNames) -> dict[str, tuple]:
    """``<layer>.<stem>`` -> (node, B initializer, scales initializer) for every layer MatMulNBits,
    ``<layer>`` as the builder names the layers of the architecture (``names``, from its registry entry)."""
    weight = re.compile(rf"^{re.escape(names.layers)}\.(\d+)\.(.+)\.MatMul\.weight_Q4$")
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        m = weight.match(node.input[1])
        if m is None:
            continue
        if len(node.input) > 3 and node.input[3]:
            raise ExportError(f"{node.name} has a zero-point input; koquant writes symmetric int4 only",
                              hint="report this: the builder's default int4 graph changed")
        out[f"{names.layer(int(m.group(1)))}.{m.group(2)}"] = (node, inits[node.input[1]], inits[node.input[2]])
    return out


def tensor_types(path: Path) -> dict[str, str]:
    """Initializer name -> storage type: ``int4 (MatMulNBits, block 32)``, ``float32``, ..."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    quant = {}
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            a = _attrs(node)
            bits = a.get("bits", 4)
            weight = node.input[1] if node.op_type == "MatMulNBits" else node.input[0]
            quant[weight] = f"int{bits} ({node.op_type}, block {a.get('block_size')})"
    out = {}
    for init in model.graph.initializer:
        if init.name in quant:
            out[init.name] = quant[init.name]
        elif not init.name.endswith(("_scales", "_scale", "_zp", "_zero_points", ".scales", ".qzeros")) \
                and len(init.dims) >= 1:
            out[init.name] = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
    return out
