"""Loading a GPTQ checkpoint with transformers: the one place the export gate and the runtime share.

transformers 5 builds a mixture of experts' experts as fused 3-D parameters (Qwen3-MoE:
``mlp.experts.gate_up_proj`` / ``down_proj``), which it fills from the per-expert tensors of a saved
checkpoint when loading. GPTQ quantizes every expert as its own Linear, so a GPTQ checkpoint stores
``mlp.experts.E.{gate,up,down}_proj.qweight`` etc., and the fused module has nowhere to put them:
transformers would load the experts as random weights. Defuser (GPTQModel's own dependency, which
GPTQModel uses the same way when it quantizes) swaps the fused block class for one with an
``nn.Linear`` per expert; the GPTQ quantizer then replaces those Linears with quantized kernels.

Defuser makes its swap by assigning module attributes of transformers (the block class in its
modeling module, the checkpoint conversion-mapping lookup). :func:`defused_experts` makes it for
one load only and puts every one of them back afterwards, so a model built later in the same
process (the source model the gate compares against, another runtime session) is transformers'
own. Models built inside the ``with`` keep the per-expert modules they were built with.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from pathlib import Path

_LOCK = threading.Lock()  # the swap is process-wide while it lasts: one load at a time
_MISSING = object()


def _defuser_patch_points(model_type: str) -> list[tuple[object, str]]:
    """(object, attribute) of everything ``defuser.replace_fused_blocks(model_type)`` reassigns."""
    from defuser.model_registry import MODEL_CONFIG, PATCH
    from transformers import conversion_mapping, modeling_utils

    points = [(conversion_mapping, "get_checkpoint_conversion_mapping"),
              (conversion_mapping, "orig_get_checkpoint_conversion_mapping"),
              (modeling_utils, "get_checkpoint_conversion_mapping")]
    for orig_path, _ in (MODEL_CONFIG.get(model_type) or {}).get(PATCH.REPLACE_MODULE, []):
        module, name = orig_path.rsplit(".", 1)
        points.append((importlib.import_module(module), name))
    return points


def needs_defuser(config: dict) -> bool:
    """Whether loading this checkpoint needs the experts defused: a registered mixture of experts Defuser knows."""
    from ...source.architectures import architecture_for

    if not architecture_for(config).experts:
        return False
    try:
        from defuser.model_registry import MODEL_CONFIG, PATCH
    except ImportError:
        from ...errors import missing_extra

        raise missing_extra("a mixture of experts' GPTQ checkpoint loads with Defuser, which is not installed",
                            "gptq") from None

    return bool((MODEL_CONFIG.get(config.get("model_type")) or {}).get(PATCH.REPLACE_MODULE))


@contextlib.contextmanager
def defused_experts(config: dict):
    """Within the block, transformers builds ``config``'s experts as one ``nn.Linear`` per expert (for a
    mixture of experts Defuser knows; nothing changes for any other model); afterwards it is as before."""
    if not needs_defuser(config):
        yield
        return
    import defuser

    model_type = config["model_type"]
    with _LOCK:
        points = _defuser_patch_points(model_type)
        saved = [(obj, name, obj.__dict__.get(name, _MISSING)) for obj, name in points]
        try:
            if not defuser.replace_fused_blocks(model_type):
                from ...errors import KoquantError

                raise KoquantError(f"Defuser could not swap {model_type}'s fused experts for per-expert Linears",
                                  hint="check that Defuser matches the pinned transformers (constraints.txt)")
            yield
        finally:
            for obj, name, value in reversed(saved):
                if value is _MISSING:
                    if name in obj.__dict__:
                        delattr(obj, name)
                else:
                    setattr(obj, name, value)


def import_gptqmodel():
    """``gptqmodel``, imported so that it leaves the Hub cache variables alone (its tokenicer sets HF_HOME and
    HF_HUB_CACHE to a folder in /tmp on import)."""
    from ...source.hub import hub_env_kept

    with hub_env_kept():
        import gptqmodel
    return gptqmodel


def load_quantized(folder: Path | str, **kwargs):
    """``AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", **kwargs)`` in eval mode, with a mixture of
    experts' experts defused for the load (:func:`defused_experts`)."""
    import json

    import_gptqmodel()  # transformers would import it for the GPTQ checkpoint, without keeping the Hub variables
    from transformers import AutoModelForCausalLM

    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    with defused_experts(config):
        loaded = AutoModelForCausalLM.from_pretrained(str(folder), device_map="cpu", **kwargs)
    (loaded[0] if isinstance(loaded, tuple) else loaded).eval()  # a tuple with output_loading_info=True
    return loaded
