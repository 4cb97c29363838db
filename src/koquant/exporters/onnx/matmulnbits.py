"""Reading and rewriting the int4 weights of onnxruntime's MatMulNBits nodes in a builder graph.

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


def pack(codes: np.ndarray, block: int) -> np.ndarray:
    n, k = codes.shape
    c = codes.astype(np.uint8).reshape(n, k // block, block)
    return (c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)


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


def rewrite_int4(folder: Path, weights: dict, reference: dict, names: OnnxNames) -> None:
    """Replace the codes and scales of every layer MatMulNBits in ``folder/model.onnx`` with ``weights``.

    ``weights`` maps ``<layer>.<stem>`` (see :func:`layer_weight_nodes`) to an object with ``codes`` [N, K] and ``scales``
    [N, K/block] (torch or numpy). ``reference`` maps the same keys to the float weights [N, K]
    they approximate: the builder's own int4 values must be close to them, which proves the
    mapping from HF modules to graph nodes (and the q/k/v order) before anything is replaced.
    """
    import onnx
    from onnx import numpy_helper

    path = folder / MODEL_FILE
    model = onnx.load(str(path))
    nodes = layer_weight_nodes(model, names)
    if set(nodes) != set(weights):
        raise ExportError(
            "the builder's int4 graph does not have the layer weights koquant quantized: "
            f"graph-only {sorted(set(nodes) - set(weights))[:3]}, koquant-only {sorted(set(weights) - set(nodes))[:3]}",
            hint="use --int4-algo rtn, and report this",
        )
    for key, (node, b_init, s_init) in nodes.items():
        attrs = _attrs(node)
        q = weights[key]
        codes, scales = _numpy(q.codes).astype(np.uint8), _numpy(q.scales).astype(np.float32)
        n, k = codes.shape
        if attrs.get("bits") != 4 or attrs.get("K") != k or attrs.get("N") != n or attrs.get("block_size") != q.block:
            raise ExportError(f"{node.name}: graph has bits={attrs.get('bits')} K={attrs.get('K')} N={attrs.get('N')} "
                              f"block={attrs.get('block_size')}, koquant has 4/{k}/{n}/{q.block}")
        old = numpy_helper.to_array(b_init)
        old_scales = numpy_helper.to_array(s_init).reshape(n, -1)
        _check_mapping(key, unpack(old)[:, :k], old_scales, q.block, _numpy(reference[key]))
        new = pack(codes, q.block)
        if new.shape != old.shape or scales.shape != old_scales.shape:
            raise ExportError(f"{node.name}: int4 shapes differ from the builder's ({new.shape} vs {old.shape})")
        b_init.CopyFrom(numpy_helper.from_array(new, b_init.name))
        s_init.CopyFrom(numpy_helper.from_array(scales.reshape(numpy_helper.to_array(s_init).shape), s_init.name))
    (folder / DATA_FILE).unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=DATA_FILE, size_threshold=0)


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _check_mapping(key: str, codes: np.ndarray, scales: np.ndarray, block: int, weight: np.ndarray) -> None:
    n, k = codes.shape
    deq = ((codes.astype(np.float32) - 8).reshape(n, k // block, block) * scales[..., None]).reshape(n, k)
    rel = float(np.linalg.norm(deq - weight) / max(np.linalg.norm(weight), 1e-12))
    if weight.shape != deq.shape or rel > 0.3:
        raise ExportError(f"{key}: the builder's int4 weights do not match the source's (relative error {rel:.2f}); "
                          "the module-to-node mapping is wrong", hint="use --int4-algo rtn, and report this")


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
        elif not init.name.endswith(("_scales", "_scale", "_zp", "_zero_points")) and len(init.dims) >= 1:
            out[init.name] = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
    return out
