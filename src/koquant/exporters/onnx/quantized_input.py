"""koquant's own int4 codes as the model builder's input: a GPTQ-layout checkpoint, never a float32 model.

Given a float checkpoint, onnxruntime-genai 0.18.0's model builder loads it with transformers and, for
int4, turns the whole graph into one protobuf with every weight in float32 before its quantizer runs
(``Model.to_nbits``): 4 bytes per parameter beside the loaded model's own copy (7949 MiB for a 1.1 B
checkpoint, ``benchmarks/export_memory_1b.md``). Given a checkpoint whose ``config.json`` says
``quantization_config.quant_method = "gptq"``, it reads the packed codes instead and makes each
MatMulNBits node from them (its ``loaders/gptq.py``), holding the quantized model only.

koquant knows its int4 codes before the build (GPTQ on the Korean calibration text, or round-to-nearest
on the same grid for the gate's yardstick), so it writes them in that layout and lets the builder do
the rest of the graph as for any model: the embedding, the norms and the output projection stay the
source's tensors, quantized by the builder's own options (``builder.LM_HEAD_OPTIONS``). The graph runs
exactly as one whose codes were put in after a float build (``tests/test_onnx_export.py``), with the zero
point 8 stored as an explicit input (the loader requires one).

The layout per decoder Linear of N outputs and K inputs (GPTQ v1, what the loader reads): ``qweight``
int32 [K / 8, N] with eight codes along K, the first in the lowest bits; ``scales`` float32 [K / block, N];
``qzeros`` int32 [K / block, N / 8], eight zero points along N, each stored minus one (7 for 8);
``g_idx`` int32 [K], the block of each input column (the loader takes K from it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ...errors import ExportError
from ...source.architectures import Architecture
from .builder import link_files

ZERO_POINT = 8  # the symmetric grid's zero point (int4_gptq: codes 0..15, dequantized as (code - 8) * scale)


def _pack_along_first(codes: np.ndarray) -> np.ndarray:
    """[R, C] 4-bit values -> int32 [R / 8, C], eight consecutive rows per word, the first in the lowest bits."""
    r, c = codes.shape
    v = codes.astype(np.uint32).reshape(r // 8, 8, c)
    out = np.zeros((r // 8, c), dtype=np.uint32)
    for j in range(8):
        out |= v[:, j, :] << np.uint32(4 * j)
    return out.view(np.int32)


def gptq_tensors(codes: np.ndarray, scales: np.ndarray, block: int) -> dict[str, np.ndarray]:
    """One Linear's codes [N, K] (0..15) and scales [N, K / block] in the GPTQ v1 layout (module docstring)."""
    n, k = codes.shape
    zeros = np.full((n, k // block), ZERO_POINT - 1, dtype=np.uint8)
    return {"qweight": _pack_along_first(codes.T), "scales": np.ascontiguousarray(scales.T.astype(np.float32)),
            "qzeros": _pack_along_first(zeros).T.copy(), "g_idx": (np.arange(k, dtype=np.int32) // block)}


def unsupported(arch: Architecture) -> str | None:
    """Why this family's int4 codes cannot go to the builder as a GPTQ checkpoint (None: they can)."""
    if arch.layers != "model.layers":
        return f"its layers are {arch.layers}, and the builder's GPTQ loader reads model.layers"
    odd = [n for names in arch.onnx.linears.values() for n in names if not n.startswith(("self_attn.", "mlp."))]
    if odd:
        return f"its layer Linear {odd[0]} is not where the builder's GPTQ loader looks"
    return None


def write(source: Path, dest: Path, weights: dict, arch: Architecture, block: int) -> Path:
    """``dest``: ``source`` (the folder the builder would read, ``builder.stage_input``'s) with every decoder Linear replaced by ``weights`` (``"<onnx layer>.<stem>"`` ->
    codes [N, K] and scales, ``int4_gptq.Int4Weight``) in the GPTQ layout, the other tensors as they are,
    one output file per source file (so writing holds one file's other tensors at a time)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    # every Linear the builder will read, with the rows of its stem's fused codes
    linears: dict[str, tuple[str, int]] = {}  # HF weight name -> (weights key, first row)
    shapes = {}
    files = sorted(source.glob("*.safetensors"))
    for f in files:
        with safe_open(f, "pt") as st:
            shapes.update({name: tuple(st.get_slice(name).get_shape()) for name in st.keys()})
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    for i in range(int(config["num_hidden_layers"])):
        for stem, names in arch.onnx.linears.items():
            key, row = f"{arch.onnx.layer(i)}.{stem}", 0
            if key not in weights:
                raise ExportError(f"koquant has no int4 codes for {key}", hint="report this with the command line")
            for name in names:
                weight = f"{arch.layer(i)}.{name}.weight"
                if weight not in shapes:
                    raise ExportError(f"{weight} is not in the checkpoint", hint="report this with the command line")
                if shapes[weight][0] % 8:
                    raise ExportError(f"{weight} has {shapes[weight][0]} outputs, not a multiple of 8, which the "
                                      "GPTQ layout's packed zero points need", hint="choose --int4-algo rtn")
                linears[weight] = (key, row)
                row += shapes[weight][0]
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in files:
        out = {}
        with safe_open(f, "pt") as st:
            for name in st.keys():
                if name not in linears:
                    out[name] = st.get_tensor(name)
                    continue
                key, row = linears[name]
                n = shapes[name][0]
                q = weights[key]
                codes = _numpy(q.codes)[row:row + n].astype(np.uint8)
                scales = _numpy(q.scales)[row:row + n]
                stem = name[: -len(".weight")]
                for part, arr in gptq_tensors(codes, scales, block).items():
                    out[f"{stem}.{part}"] = torch.from_numpy(arr)
        save_file(out, str(dest / f.name))
        del out
    link_files(source, dest, lambda f: f.suffix != ".safetensors"
               and f.name not in ("config.json", "model.safetensors.index.json"))
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": block, "desc_act": False,
                                     "sym": True, "checkpoint_format": "gptq"}
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return dest


def _numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
