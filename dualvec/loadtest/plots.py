"""PNG plots (matplotlib, Agg backend): a run's latency over time and its distribution, and a sweep's capacity
curve."""
from __future__ import annotations

import textwrap

import numpy as np

from dualvec.loadtest.driver import PhaseResult
from dualvec.loadtest.report import fmt_ms, time_series


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(res: PhaseResult, summary: dict, path: str, title: str) -> None:
    """Latency over time (p50, p99, max per interval, answers per second) and the latency distribution."""
    plt = _pyplot()
    rss = summary.get("server_rss")
    rows = 3 if rss else 2
    fig, axes = plt.subplots(rows, 1, figsize=(8, 3.0 * rows), dpi=80)
    ser = summary.get("series") or time_series(res, 1.0)
    t = np.array(ser["t_s"])
    ax = axes[0]
    for key, style in (("max_ms", ":"), ("p99_ms", "-"), ("p50_ms", "-")):
        vals = np.array([np.nan if v is None else v for v in ser[key]], dtype=float)
        ax.plot(t, vals, style, label=key.replace("_ms", ""))
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.set_xlabel("time since start (s)")
    if summary["warmup_s"]:
        ax.axvspan(0, summary["warmup_s"], color="0.9", label="warm-up")
    ax2 = ax.twinx()
    ax2.plot(t, ser["ok_per_s"], color="tab:green", alpha=0.5, label="ok/s")
    if any(ser["errors_per_s"]):
        ax2.plot(t, ser["errors_per_s"], color="tab:red", alpha=0.5, label="errors/s")
    ax2.set_ylabel("calls/s")
    ax2.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left", ncol=3)
    ax.set_title(textwrap.fill(title, 110), fontsize=8)
    ax = axes[1]
    if res.ok.total:
        qs, vals = res.ok.percentile_curve()
        x = 1.0 / (1.0 - qs / 100.0)
        ax.plot(x, vals / 1000.0)
        ax.set_xscale("log")
        ticks = [1, 2, 10, 100, 1000, 10000, 100000]
        ax.set_xticks(ticks)
        ax.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
        ax.set_xlim(1, max(2, min(1e5, res.ok.total)))
        for q, lab in ((50, "p50"), (99, "p99")):
            v = res.ok.percentile(q) / 1000
            ax.annotate(f"{lab} {fmt_ms(v)} ms", (1 / (1 - q / 100), v), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    ax.set_xlabel("percentile (ok calls, measured window)")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, alpha=0.3)
    if rss:
        ax = axes[2]
        ax.plot(rss["t_s"], rss.get("mib", rss.get("rss_mib")))
        ax.set_xlabel("time (s)")
        ax.set_ylabel(f"server {rss.get('measure', 'RSS')} (MiB)")
        ax.set_title(rss.get("label", "server RSS"), fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_sweep(sweep: dict, path: str, title: str) -> None:
    """The capacity curve: latency p50/p99 and achieved rate against offered load, saturation point marked."""
    plt = _pyplot()
    steps = sweep["steps"]
    x = np.array([s["offered_rate"] for s in steps])
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(7, 6.5), dpi=80, sharex=True)
    for key, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-"), ("p99.9", "v:")):
        y = np.array([np.nan if s["latency_ms"][key] is None else s["latency_ms"][key] for s in steps])
        ax.plot(x, y, style, label=key, markersize=4)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, from intended send)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(textwrap.fill(title, 95), fontsize=8)
    bx.plot(x, [s["achieved_rate"] for s in steps], "o-", label="achieved (ok answers/s)", markersize=4)
    bx.plot(x, x, "--", color="0.6", label="offered")
    failed = [s["error_rate"] * s["send_rate"] for s in steps]
    if any(failed):
        bx.plot(x, failed, "x-", color="tab:red", label="failed calls/s", markersize=4)
    bx.set_xlabel("offered load (calls/s, open loop)")
    bx.set_ylabel("calls/s")
    bx.grid(True, alpha=0.3)
    sat = sweep["saturation"]
    if sat["sustainable_rate"] is not None:
        for a in (ax, bx):
            a.axvline(sat["sustainable_rate"], color="tab:green", alpha=0.6)
            if sat["reached"]:
                a.axvline(sat["first_saturated_rate"], color="tab:red", alpha=0.6)
        lb = sat["latency_below_ms"]
        bx.annotate(f"keeps up to {sat['sustainable_rate']:g}/s\n(p50 {fmt_ms(lb['p50'])} ms, "
                    f"p99 {fmt_ms(lb['p99'])} ms)", (sat["sustainable_rate"], sat["sustainable_achieved"]),
                    xytext=(-10, 10), textcoords="offset points", fontsize=8, ha="right")
        if sat["reached"]:
            ax.annotate("saturated", (sat["first_saturated_rate"], ax.get_ylim()[1]), fontsize=8, color="tab:red",
                        xytext=(3, -12), textcoords="offset points")
    for rate in sat.get("transient_saturation_rates", []):
        step = next(s for s in steps if s["offered_rate"] == rate)
        ax.annotate("transient", (rate, step["latency_ms"]["p99"] or 1.0), fontsize=7, color="0.4",
                    xytext=(4, 0), textcoords="offset points")
    ax.legend(fontsize=8, loc="upper left")
    bx.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
