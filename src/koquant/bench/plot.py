"""``report.png``: file size vs KL divergence with the Pareto front, and decode tok/s per export.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

from pathlib import Path

#: where a KL of exactly zero is drawn on the log axis
_KL_FLOOR = 1e-12


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the (name, size, kl) points no other point beats on both size and KL, smallest first."""
    front, best = [], float("inf")
    for name, size, kl in sorted(points, key=lambda p: (p[1], p[2])):
        if kl < best:
            front.append(name)
            best = kl
    return front


def render(report, path: Path, dpi: int = 110) -> dict[str, list[str]]:
    """Write the figure to ``path``; returns the export names labelled on each panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5.2), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax_kl, ax_speed = fig.subplots(1, 2, width_ratios=(1.15, 1))
    title = (f"koquant bench: {report.source['name']} vs its {report.source['baseline_dtype']} baseline "
             f"(transformers), {report.text['name']}")
    fig.suptitle(title, fontsize=11)
    labelled = {"size_vs_kl": _size_vs_kl(ax_kl, report), "decode": _decode(ax_speed, report)}
    fig.savefig(path, dpi=dpi)
    return labelled


def _size_vs_kl(ax, report) -> list[str]:
    exports = [e for e in report.exports if e.get("kl_mean") is not None]
    if not exports:
        ax.text(0.5, 0.5, "quality not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return []
    mib = 2 ** 20
    pts = [(e["name"], e["file_bytes"] / mib, max(e["kl_mean"], _KL_FLOOR)) for e in exports]
    front = set(pareto_front(pts))
    for i, (name, size, kl) in enumerate(sorted(pts, key=lambda p: p[1])):
        on = name in front
        ax.scatter([size], [kl], s=46 if on else 30, color="tab:red" if on else "tab:blue", zorder=3,
                   edgecolor="black" if on else "none", linewidth=0.6)
        # neighbours in size alternate above and below their point, so close labels do not overprint
        ax.annotate(name, (size, kl), textcoords="offset points", xytext=(5, 5 if i % 2 == 0 else -12), fontsize=8)
    fpts = sorted((p for p in pts if p[0] in front), key=lambda p: p[1])
    ax.step([p[1] for p in fpts], [p[2] for p in fpts], where="post", color="tab:red", linewidth=1, alpha=0.7,
            label="Pareto front (no export is both smaller and closer)")
    src = report.baseline["file_bytes"] / mib
    ax.axvline(src, color="gray", linestyle="--", linewidth=0.8,
               label=f"source, {report.source['stored_dtype']} ({src:.1f} MiB)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax.xaxis)
    ax.set_xlabel("file size (MiB, log)")
    ax.set_ylabel("mean KL(baseline ‖ export), nats (log)")
    ax.set_title("size vs KL divergence", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower left")
    return [p[0] for p in pts]


def _plain_ticks(axis) -> None:
    """Log-axis ticks as plain numbers (6, 10, 20) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _pos: f"{v:g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(fmt)


def _decode(ax, report) -> list[str]:
    rows = [e for e in (report.baseline, *report.exports) if e.get("decode_tok_s") is not None]
    if not rows:
        ax.text(0.5, 0.5, "latency not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return []
    names = [e["name"] if e is not report.baseline else f"source ({report.source['baseline_dtype']})" for e in rows]
    y = list(range(len(rows)))[::-1]
    med = [e["decode_tok_s"] for e in rows]
    lo = [m - e["latency"]["decode_tok_s"]["min"] for m, e in zip(med, rows)]
    hi = [e["latency"]["decode_tok_s"]["max"] - m for m, e in zip(med, rows)]
    colors = ["gray" if e is report.baseline else "tab:green" for e in rows]
    ax.barh(y, med, xerr=[lo, hi], color=colors, alpha=0.85, capsize=3)
    bounds = [(yy, e["bound_tok_s"]) for yy, e in zip(y, rows) if e.get("bound_tok_s")]
    if bounds:
        ax.scatter([b for _, b in bounds], [yy for yy, _ in bounds], marker="|", s=180, color="black", zorder=3,
                   label="memory-bandwidth bound")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_xscale("log")
    ax.set_yticks(y, names, fontsize=8)
    for yy, m, e in zip(y, med, rows):
        ax.annotate(f"{m:.1f}" if m < 10 else f"{m:.0f}", (e["latency"]["decode_tok_s"]["max"], yy),
                    textcoords="offset points", xytext=(6, 4), fontsize=7)
    st = report.settings
    ax.set_xlabel(f"decode tok/s ({st['decode_tokens']} tokens, {st['threads']} threads; median, min–max)")
    ax.set_title("decode speed", fontsize=10)
    ax.grid(True, axis="x", which="both", alpha=0.25)
    return [e["name"] for e in rows if e is not report.baseline]
