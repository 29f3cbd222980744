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


def _bench_frame(results: pd.DataFrame) -> pd.DataFrame:
    frame = results[(results["scenario"] == "bench_scale") & (results["metric"] != "verdict")]
    frame = frame.assign(n=frame["case"].str.extract(r"N=(\d+)", expand=False).astype(int))
    return frame


def scale_latency(results: pd.DataFrame) -> str:
    """First-connection latency p50 vs N (log x), per mode and target."""
    frame = _bench_frame(results)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for (mode, metric), rows in frame[frame["metric"].str.match(r"latency_.*_p50")].groupby(
        ["proxy_mode", "metric"]
    ):
        target = metric.removeprefix("latency_").removesuffix("_p50")
        rows = rows.sort_values("n")
        ax.plot(rows["n"], rows["value"], marker="o", label=f"{mode}: {target}")
    ax.set_xscale("log")
    ax.set_xlabel("Services (N)")
    ax.set_ylabel("first-connection latency p50 (µs)")
    ax.set_title("Connection setup cost vs number of Services", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _svg(fig)


def scale_metric(results: pd.DataFrame, metrics: list[str], ylabel: str, title: str) -> str:
    """Chosen metrics vs N (log-log), per mode."""
    frame = _bench_frame(results)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for (mode, metric), rows in frame[frame["metric"].isin(metrics)].groupby(
        ["proxy_mode", "metric"]
    ):
        rows = rows.sort_values("n")
        ax.plot(rows["n"], rows["value"], marker="o", label=f"{mode}: {metric}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Services (N)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _svg(fig)


def programming_latency(samples: pd.DataFrame) -> str:
    """The share of (change, node) samples programmed within x ms: one curve per proxy
    mode and node count (log x), so the tail across many nodes shows."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for (mode, case), rows in samples.groupby(["proxy_mode", "case"]):
        values = rows["latency_ms"].sort_values().to_numpy()
        share = [(i + 1) / len(values) for i in range(len(values))]
        nodes = str(case).rsplit("nodes=", 1)[-1]
        ax.step(values, share, where="post", label=f"{mode}, {nodes} nodes ({len(values)})")
    ax.set_xscale("log")
    ax.set_xlabel("published -> the node's rules loaded (ms)")
    ax.set_ylabel("share of node x change samples")
    ax.set_title("Network-programming latency per node", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _svg(fig)


def failover_timeline(samples: pd.DataFrame, change_at: float, title: str) -> str:
    """Probes and failures per second, the change marked at 0."""
    ended = samples["t"] + samples["latency_ms"].fillna(0) / 1000.0
    second = (ended - change_at).floordiv(1).astype(int)
    per = (
        pd.DataFrame({"second": second, "failed": ~samples["ok"]})
        .groupby("second")
        .agg(probes=("failed", "size"), failed=("failed", "sum"))
    )
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.bar(per.index, per["probes"], color="#9ecae1", label="probes")
    ax.bar(per.index, per["failed"], color="#de2d26", label="failed")
    ax.axvline(0, color="black", linestyle="--", linewidth=1)
    ax.text(0.05, ax.get_ylim()[1] * 0.9, "change", fontsize=8)
    ax.set_xlabel("seconds after the change")
    ax.set_ylabel("per second")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _svg(fig)
