"""The human-readable ``koquant plan`` output (rich tables). Imported only by the CLI."""

from __future__ import annotations

from collections.abc import Sequence

from koquant.plan.planner import Plan

__all__ = ["render", "human_bytes", "COMMON_GGUF_TYPES"]

COMMON_GGUF_TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M", "Q2_K")


def human_bytes(n: int, signed: bool = False) -> str:
    sign = ("+" if n >= 0 else "-") if signed else ("-" if n < 0 else "")
    a = abs(n)
    if a >= 1024**3:
        s = f"{a / 1024**3:.2f} GiB"
    elif a >= 1024**2:
        s = f"{a / 1024**2:.0f} MiB"
    else:
        s = f"{a / 1024:.0f} KiB"
    return sign + s


def compact_bytes(n: int, signed: bool = False) -> str:
    """Short form for table cells: ``13.49G``, ``513M`` (binary units)."""
    sign = ("+" if n >= 0 else "-") if signed else ("-" if n < 0 else "")
    a = abs(n)
    if a >= 1024**3:
        return f"{sign}{a / 1024**3:.2f}G"
    if a >= 1024**2:
        return f"{sign}{a / 1024**2:.0f}M"
    return f"{sign}{a / 1024:.0f}K"


def _model_line(plan: Plan) -> str:
    m = plan.model
    n_sliding = sum(m.sliding_layers)
    window = ""
    if n_sliding:
        where = "every layer" if n_sliding == m.n_layers else f"{n_sliding} of {m.n_layers} layers"
        window = f", sliding window {m.sliding_window} on {where}"
    params = f"{m.n_params / 1e9:.2f} B parameters"
    if m.is_moe:
        params += f", {m.n_active_params / 1e9:.2f} B active: {m.n_experts_used} of {m.n_experts} experts per token"
    ffn = f"FFN {m.expert_intermediate} per expert" if m.is_moe else f"FFN {m.intermediate}"
    return (
        f"[bold]{m.name}[/bold] ({m.arch}, {params}): "
        f"{m.n_layers} layers, hidden {m.hidden}, "
        f"{ffn}, {m.n_heads} heads / {m.n_kv_heads} KV x {m.head_dim}, vocab {m.vocab}, "
        f"{'tied' if m.tied else 'untied'} embeddings{window}"
    )


def _smallest_fit(plan: Plan, key: str, ctx: int) -> str:
    usable = {d.name: d.usable_bytes for d in plan.devices}
    fitting = [f for f in plan.ram(key, ctx).fits if f.fits]
    if not fitting:
        return "[red]none[/red]"
    best = min(fitting, key=lambda f: usable[f.device])
    return f"{best.device} [green]{compact_bytes(best.headroom_bytes, signed=True)}[/green]"


def render(plan: Plan, console=None, *, show: Sequence[str] | None = None, all_devices: bool | None = None) -> None:
    """Print the plan; ``show`` limits the rows to these export keys (all when None).

    With the default device set the last column is the smallest device each export fits at
    the largest context; with devices chosen by the user (``all_devices=False``) there is a
    headroom column per device.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from koquant.plan.devices import DEVICES

    console = console or Console()
    if all_devices is None:
        all_devices = [d.name for d in plan.devices] == list(DEVICES)
    exports = [e for e in plan.exports if show is None or e.key in show]
    top = plan.ctx[-1]
    console.print(_model_line(plan))
    console.print(f"source: {plan.model.source or plan.model.name}")

    table = Table(
        title="File size and RAM (weights + KV cache + compute), sizes in GiB (G) / MiB (M)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("export", no_wrap=True, min_width=14)
    table.add_column("file", justify="right", no_wrap=True, min_width=6)
    table.add_column("bits/w", justify="right", no_wrap=True, min_width=5)
    moe = plan.model.is_moe
    if moe:  # what one token reads: the bandwidth bound of decode speed
        table.add_column("read\n/token", justify="right", no_wrap=True, min_width=6)
    for c in plan.ctx:
        table.add_column(f"RAM\n@{c}", justify="right", no_wrap=True, min_width=6)
    if all_devices:
        table.add_column(f"smallest fit @{top}, headroom", min_width=12)
    else:
        for d in plan.devices:
            table.add_column(f"{d.name}\n{compact_bytes(d.usable_bytes)} @{top}", justify="right", no_wrap=True)
    notes: dict[str, list[str]] = {}
    for e in exports:
        for n in e.notes:
            notes.setdefault(n, []).append(e.key)
        row = [e.key + ("*" if e.notes else ""), compact_bytes(e.file_bytes), f"{e.bits_per_weight:.2f}"]
        if moe:
            row.append(compact_bytes(e.active_bytes))
        row += [compact_bytes(plan.ram(e.key, c).total_bytes) for c in plan.ctx]
        if all_devices:
            row.append(_smallest_fit(plan, e.key, top))
        else:
            for f in plan.ram(e.key, top).fits:
                text = compact_bytes(f.headroom_bytes, signed=True)
                row.append(f"[green]{text}[/green]" if f.fits else f"[red]{text}[/red]")
        table.add_row(*row, style=None if e.available else "dim")
    console.print(table)
    for n, keys in notes.items():
        console.print(f"* {', '.join(keys)}: {n}")

    m = plan.model
    per_token = 2 * m.n_layers * m.n_kv_heads * m.head_dim
    kv_lines: list[str] = []
    compute = 0
    for e in exports:
        r = plan.ram(e.key, top)
        compute = r.compute_bytes
        line = f"{e.runtime} {r.kv_type}"
        if r.kv_window:
            line += f" window {r.kv_window}" + (f" on {r.kv_sliding_layers} layers"
                                                 if r.kv_sliding_layers != m.n_layers else "")
        elif sum(m.sliding_layers):
            line += " full context on every layer"
        if r.kv_bytes_swa_off is not None:
            line += (f" ({human_bytes(r.kv_bytes)} @{top}; with --swa-full off, as llama-server runs it: "
                     f"{human_bytes(r.kv_bytes_swa_off)})")
        if line not in kv_lines:
            kv_lines.append(line)
    console.print(
        f"KV cache: {per_token} values per token ({'; '.join(kv_lines)}); compute estimate {human_bytes(compute)}"
    )
    if all_devices:
        console.print(
            "devices: " + ", ".join(f"{d.name} {human_bytes(d.usable_bytes)}" for d in plan.devices) + " usable"
        )
    for w in plan.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    console.print("[dim]Assumptions:[/dim]")
    for a in plan.all_assumptions():
        console.print(f"[dim]  - {a}[/dim]")
