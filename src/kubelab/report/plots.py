"""Plots for the report, rendered by matplotlib to SVG text for embedding."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog so the SVG embeds inline


def pods_by_source_ip(samples: pd.DataFrame, title: str) -> str:
    """Stacked bars: how many probes each pod answered, split by the client IP it saw."""
    ok = samples[samples["ok"]]
    table = ok.groupby(["pod", "client_ip"]).size().unstack(fill_value=0).sort_index()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if table.empty:
        ax.text(0.5, 0.5, "no successful probes", ha="center", va="center")
        ax.set_axis_off()
    else:
        table.plot(kind="bar", stacked=True, ax=ax, width=0.7)
        ax.set_ylabel("probes answered")
        ax.set_xlabel("pod")
        ax.legend(
            title="source IP the pod saw",
            fontsize=8,
            title_fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
        ax.tick_params(axis="x", labelrotation=30)
    ax.set_title(title, fontsize=10)
    return _svg(fig)
