"""Deployment size planning: file sizes and runtime memory of every export, from config.json alone.

>>> from koquant.plan import plan
>>> p = plan("ocelot-10.8b", ctx=(4096,))            # a preset id, a model folder or a config.json
>>> p.export("Q4_K_M").file_bytes                    # bytes of the GGUF file
>>> p.ram("gguf:Q4_K_M", 4096).fit_on("laptop-16gb").headroom_bytes
>>> p.to_dict()                                      # what ``koquant plan --json`` prints

Nothing here imports torch, transformers or llama.cpp; reading a plan takes milliseconds.
"""

from koquant.source.architectures import ARCHITECTURES, Weight
from koquant.plan.devices import DEVICES, Device, DeviceFit, parse_size
from koquant.plan.gguf_check import GGUFComparison, compare_gguf
from koquant.exporters.gguf.reader import GGUFFile, GGUFTensorInfo, gguf_tensors, read_gguf
from koquant.plan.gguf_size import GGUFPlan, GGUFTensorPlan, plan_gguf
from koquant.plan.kv import compute_buffer_bytes, kv_cache_bytes
from koquant.plan.model_spec import ModelSpec, load_config, spec_from_config, spec_from_path
from koquant.plan.other_formats import FormatPlan, plan_gptq, plan_onnx, plan_source
from koquant.plan.planner import DEFAULT_CTX, Export, Plan, RuntimeEstimate, plan, resolve_source
from koquant.plan.presets import PRESETS, SEED_IDS, preset, preset_spec
from koquant.plan.vocab_footprint import VocabFootprint
from koquant.quant_recipes.gguf import FILE_TYPES, GGML_TYPES, file_type, ggml_type, row_bytes, tensor_bytes

__all__ = [
    "plan",
    "Plan",
    "Export",
    "RuntimeEstimate",
    "DEFAULT_CTX",
    "resolve_source",
    "ModelSpec",
    "spec_from_config",
    "spec_from_path",
    "load_config",
    "PRESETS",
    "SEED_IDS",
    "preset",
    "preset_spec",
    "DEVICES",
    "Device",
    "DeviceFit",
    "parse_size",
    "GGML_TYPES",
    "FILE_TYPES",
    "ggml_type",
    "file_type",
    "row_bytes",
    "tensor_bytes",
    "GGUFPlan",
    "GGUFTensorPlan",
    "plan_gguf",
    "FormatPlan",
    "plan_gptq",
    "plan_onnx",
    "plan_source",
    "kv_cache_bytes",
    "compute_buffer_bytes",
    "read_gguf",
    "gguf_tensors",
    "GGUFFile",
    "GGUFTensorInfo",
    "compare_gguf",
    "GGUFComparison",
    "ARCHITECTURES",
    "Weight",
    "VocabFootprint",
]
