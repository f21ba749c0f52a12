"""How time grows with length (`lw.scaling`) as a log-log plot, PNG or SVG (matplotlib)."""

from __future__ import annotations

import io

from .._provide import provides
from ..analysis.scaling import Scaling
from ..errors import InputError

STYLES = {"attention": "-", "mlp": "--", "rest": ":", "total": "-."}


@provides(Scaling.render)
def render(scaling: Scaling, fmt: str) -> bytes:
    """Seconds per forward against tokens, per implementation and component, at the smallest batch
    size, each line labelled with its fitted power."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if fmt not in ("png", "svg"):
        raise InputError(f"unknown format {fmt!r}: use 'png' or 'svg'")
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    rows = scaling.rows
    smallest = min((r["batch_size"] for r in rows), default=1)
    for impl in sorted({r["implementation"] for r in rows}):
        for component in ("attention", "mlp", "total"):
            pts = sorted(
                (r["length"], r["seconds"])
                for r in rows
                if r["implementation"] == impl and r["component"] == component and r["batch_size"] == smallest
            )
            if not pts:
                continue
            k = scaling.exponents.get((impl, component), float("nan"))
            ax.plot(*zip(*pts), STYLES[component], marker="o", label=f"{impl} {component} (~L^{k:.2f})")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="tokens",
        ylabel="seconds per forward",
        title=f"{scaling.model_name}: time by length",
    )
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt)
    return buffer.getvalue()
