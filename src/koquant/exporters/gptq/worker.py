"""GPTQModel in a child process: ``quantize`` and ``logits``, run as ``koquant.procs`` jobs.

GPTQModel patches transformers when imported, starts worker thread pools, prints its own
progress bars and keeps large buffers alive; running it as a child keeps all of that out of
koquant's process (whose transformers computes the reference logits) and frees its memory when
it ends. The parent passes token ids, never text, so both sides see identical calibration and
evaluation tokens.

``quantize``: load the source, GPTQ every decoder Linear layer by layer on the calibration ids,
save in the GPTQ v1 layout. ``logits``: load the saved folder the way users do
(``AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")``; a mixture of experts with its experts
defused, :mod:`koquant.exporters.gptq.loading`) and write the next-token
logits of the evaluation ids to an ``.npy`` file.
"""

from __future__ import annotations

import json
import time


def quantize(job: dict) -> None:
    import torch

    from .loading import import_gptqmodel

    gptqmodel = import_gptqmodel()
    GPTQModel, QuantizeConfig = gptqmodel.GPTQModel, gptqmodel.QuantizeConfig

    qc = QuantizeConfig(
        bits=job["bits"], group_size=job["group_size"], desc_act=job["act_order"], sym=job["sym"],
        damp_percent=job["damp"], mse=job.get("mse", 0.0), offload_to_disk=True, offload_to_disk_path=job["offload_dir"],
    )
    start = time.monotonic()
    model = GPTQModel.load(job["source"], qc, dtype=getattr(torch, job["dtype"]), device="cpu")
    calibration = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in job["calibration"]]
    model.quantize(calibration, batch_size=1, calibration_sort=None)
    model.save(job["out"])
    print(f"KOQUANT_DONE quantize {time.monotonic() - start:.1f}s", flush=True)


def logits(job: dict) -> None:
    import numpy as np
    import torch

    from koquant.exporters.gptq.loading import load_quantized
    from koquant.source.architectures import architecture_for

    torch.manual_seed(0)
    model = load_quantized(job["folder"])
    layer = model.get_submodule(architecture_for(model.config).linear_path(0))
    out = []
    with torch.inference_mode():
        for ids in job["ids"]:
            out.append(model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float().numpy())
    np.save(job["logits"], np.stack(out))
    info = {"linear_class": f"{type(layer).__module__}.{type(layer).__qualname__}", "dtype": str(model.dtype)}
    with open(job["info"], "w", encoding="utf-8") as f:
        json.dump(info, f)
    print("KOQUANT_DONE logits", flush=True)

