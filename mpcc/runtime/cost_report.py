"""What a person sees of a ``PlanCost``: the summary with its two tables, and
a plot of where rounds and bytes go (matplotlib, the optional ``plot`` extra)."""
from __future__ import annotations

__all__ = ["format_summary", "plot_cost", "PLOT_INSTALL_HINT"]

PLOT_INSTALL_HINT = "plotting needs matplotlib: pip install 'mpcc[plot]' (or pip install matplotlib)"
_MB = 1e6
_HEADER = f"{'rounds':>7} {'node-by-node':>12} {'online MB':>10} {'client MB':>10} {'server MB':>10} {'offline MB':>10}"


def format_summary(cost) -> str:
    """Totals, the wall-time estimate on ``cost.network``, then the breakdown by
    layer (graph order) and by op family (most online bytes first)."""
    net, client, server = cost.network, cost.per_party[0].online_bytes, cost.per_party[1].online_bytes
    lines = [
        f"cost on {net.describe()}",
        f"  rounds     {cost.rounds} scheduled (node by node: {cost.sequential_rounds})",
        f"  online     {cost.online_bytes / _MB:.2f} MB: client -> server {client / _MB:.2f} MB, "
        f"server -> client {server / _MB:.2f} MB",
        f"  offline    {cost.offline_bytes / _MB:.2f} MB of dealer material; setup {cost.setup_bytes / _MB:.2f} MB "
        f"once per deployment",
        f"  compute    {cost.compute_seconds:.3f} s estimated (fitted to runs on the cpu backend of a 2-core "
        f"machine, within ~30%: docs/cost.md)",
        f"  wall       {cost.estimate_seconds():.3f} s estimated = {cost.latency_seconds():.3f} s latency "
        f"({cost.rounds} rounds) + {cost.bandwidth_seconds():.3f} s bandwidth (the busier party's "
        f"{max(client, server) / _MB:.2f} MB) + {cost.compute_seconds:.3f} s compute",
    ]
    lines += _table("by layer", cost.by_layer().items())
    lines += _table("by op family", sorted(cost.by_family().items(), key=lambda kv: -kv[1].online_bytes))
    return "\n".join(lines)


def _table(title: str, rows) -> list[str]:
    rows = list(rows)
    width = max([len(title)] + [len(str(name)) + 2 for name, _ in rows])
    lines = ["", f"{title:{width}} {_HEADER}"]
    for name, row in rows:
        lines.append(f"  {str(name):{width - 2}} {row.rounds:7} {row.node_rounds:12} {row.online_bytes / _MB:10.3f} "
                     f"{row.client_bytes / _MB:10.3f} {row.server_bytes / _MB:10.3f} {row.offline_bytes / _MB:10.3f}")
    return lines


# panel title -> what a row contributes to it
_PANELS = {
    "rounds on the critical path: {:,.0f}": lambda row: row.rounds,
    "online MB, both ways: {:,.2f}": lambda row: row.online_bytes / _MB,
    "offline MB (dealer material): {:,.2f}": lambda row: row.offline_bytes / _MB,
}


def plot_cost(cost, path) -> None:
    """Writes a PNG: one panel per entry of ``_PANELS``, a bar per layer (graph
    order), each bar stacked by op family. Raises ImportError with
    ``PLOT_INSTALL_HINT`` without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(PLOT_INSTALL_HINT) from error
    cells = cost.breakdown("layer", "family")
    layers = list(dict.fromkeys(layer for layer, _ in cells))
    families = sorted({family for _, family in cells},
                      key=lambda f: -sum(row.online_bytes + row.rounds for (_, g), row in cells.items() if g == f))
    figure = Figure(figsize=(max(8.0, 0.45 * len(layers) + 5), 3 * len(_PANELS)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(_PANELS), 1, sharex=True)
    colors = [_color(index) for index in range(len(families))]
    for ax, (title, value) in zip(axes, _PANELS.items()):
        bottom = [0.0] * len(layers)
        for family, color in zip(families, colors):
            heights = [value(cells[(layer, family)]) if (layer, family) in cells else 0.0 for layer in layers]
            ax.bar(range(len(layers)), heights, bottom=bottom, color=color, label=family)
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set_title(title.format(sum(bottom)), fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(layers)), layers, rotation=45, ha="right")
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", fontsize="small", title="op family")
    figure.suptitle(f"{cost.rounds} rounds, {cost.online_bytes / _MB:.1f} MB online, "
                    f"{cost.estimate_seconds():.2f} s estimated on {cost.network.describe()}")
    figure.savefig(path, dpi=100)


def _color(index: int):
    from matplotlib import colormaps
    return colormaps["tab20"](index % 20)
