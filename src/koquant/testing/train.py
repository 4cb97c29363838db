"""Brief, deterministic training of a miniature on the Korean bills (never on held-out text)."""

from __future__ import annotations

import math
from pathlib import Path


def train_on_korean(model, tokenizer_dir: Path, *, steps: int, seq_len: int = 256, batch: int = 8,
                    lr: float = 3e-3, seed: int = 0, progress=None) -> list[float]:
    """Next-token training on kobill; returns the loss curve."""
    import torch
    from transformers import AutoTokenizer

    from ..quant_recipes.calibration import korean_bills

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = torch.tensor(tok(korean_bills().plain_text())["input_ids"], dtype=torch.long)
    if len(ids) < seq_len + 1:
        raise ValueError("not enough training text")
    gen = torch.Generator().manual_seed(seed)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))

    model.train()
    losses = []
    task = progress.add_task("training miniature on kobill", total=steps) if progress else None
    for step in range(steps):
        starts = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=gen)
        x = torch.stack([ids[s:s + seq_len] for s in starts])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        if progress:
            progress.update(task, advance=1, description=f"training miniature on kobill (loss {losses[-1]:.2f})")
    model.eval()
    return losses
