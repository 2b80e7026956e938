"""The numbers of a run as a JSON-ready dict (``summarize``), and the text reports of a run and of a sweep."""
from __future__ import annotations

import numpy as np

from dualvec.loadtest.driver import SERIES_BITS, PhaseResult
from dualvec.loadtest.histogram import Histogram, latency_ms


def summarize(res: PhaseResult, *, mode: str, duration: float, warmup: float, concurrency: int = 0,
              rate: float = 0.0, interval: float = 1.0, series: bool = True, stream_window: int = 0) -> dict:
    """The numbers of a phase as a JSON-ready dict. In stream mode (``stream_window`` > 0) its calls are the
    searches sent over the streams, and ``stream`` tells of the streams themselves."""
    failed = sum(res.errors.values())
    out: dict = {
        "mode": mode, "concurrency": concurrency if mode == "closed" else None,
        "offered_rate": round(rate, 2) if mode == "open" else None,
        "duration_s": duration, "warmup_s": warmup,
        "send_rate": round(res.sent / duration, 2),
        "achieved_rate": round(res.completed_ok / duration, 2),
        "calls": {"sent": res.sent, "ok": res.ok.total, "failed": failed, "unfinished": res.unfinished,
                  "checked": res.checked, "wrong_answers": res.wrong},
        "error_rate": round(failed / res.sent, 6) if res.sent else 0.0,
        "latency_ms": latency_ms(res.ok),
        "latency_all_ms": latency_ms(res.all),
        "errors": dict(res.errors.most_common()),
        "error_messages": dict(res.messages),
        "per_op": {op: dict(latency_ms(h), errors={k.split(" ", 1)[1]: v for k, v in res.errors_by_op.items()
                                                   if k.split(" ", 1)[0] == op})
                   for op, h in res.per_op.items()},
        "generator_cpu": [round(c / res.wall, 3) for c in res.cpu] if res.wall else [],
        "stream": None,
    }
    if stream_window:
        out["stream"] = {"window": stream_window, "opened": res.streams_opened,
                         "broken": sum(res.streams_broken.values()), "errors": dict(res.streams_broken.most_common()),
                         "error_messages": dict(res.stream_messages), "searches_sent": res.stream_sent,
                         "searches_answered": res.stream_answered}
    if mode == "open":
        out["send_lag_ms"] = {k: latency_ms(res.lag)[k] for k in ("p50", "p99", "max")}
    if res.wrong_examples:
        out["wrong_answer_examples"] = res.wrong_examples
    warnings = []
    if mode == "open" and rate and res.sent < 0.98 * rate * duration:
        warnings.append(f"the generator sent {res.sent / duration:.0f}/s of the {rate:.0f}/s asked: it is the "
                        f"bottleneck (add --processes)")
    elif mode == "open" and res.lag.total and res.lag.percentile(99) > 5000:
        warnings.append(f"calls left up to {res.lag.percentile(99) / 1000:.1f} ms late (p99): the generator is "
                        f"falling behind its schedule (add --processes); its lateness counts in the latency")
    busy = [c / res.wall for c in res.cpu if res.wall]
    if busy and max(busy) > 0.9:
        warnings.append(f"a generator process used {max(busy):.0%} of a core: the numbers may measure the "
                        f"generator (add --processes, or run it on another machine)")
    if res.unfinished:
        warnings.append(f"{res.unfinished} {'searches' if stream_window else 'calls'} were still unanswered when "
                        f"the run stopped waiting")
    out["warnings"] = warnings
    if series and res.series_ok is not None:
        out["series"] = time_series(res, interval)
    return out


def time_series(res: PhaseResult, interval: float) -> dict:
    """Calls per second and latency p50/p99/max in each interval of the run (warm-up included)."""
    proto = Histogram(SERIES_BITS)
    n = len(res.series_ok)
    used = np.flatnonzero(res.series_ok + res.series_err)
    n = int(used[-1]) + 1 if len(used) else 0
    p50, p99, mx = [], [], []
    for i in range(n):
        proto.counts[:] = res.series_hist[i]
        proto.total = int(res.series_hist[i].sum())
        nz = np.flatnonzero(proto.counts)
        if proto.total:
            proto.max = int(proto.bucket_bounds(int(nz[-1]))[1])
            proto.min = int(proto.bucket_bounds(int(nz[0]))[0])
        p50.append(None if not proto.total else round(proto.percentile(50) / 1000, 3))
        p99.append(None if not proto.total else round(proto.percentile(99) / 1000, 3))
        mx.append(None if not proto.total else round(proto.max / 1000, 3))
    return {"interval_s": interval, "t_s": [round((i + 0.5) * interval, 3) for i in range(n)],
            "ok_per_s": [round(float(v) / interval, 1) for v in res.series_ok[:n]],
            "errors_per_s": [round(float(v) / interval, 1) for v in res.series_err[:n]],
            "p50_ms": p50, "p99_ms": p99, "max_ms": mx}


def fmt_ms(v: float | None) -> str:
    """Milliseconds with three significant digits or so; '-' for None."""
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _lat_line(lat: dict) -> str:
    return "  ".join(f"{k} {fmt_ms(lat[k])}" for k in ("p50", "p90", "p99", "p99.9", "max"))


def format_report(s: dict, header: str) -> str:
    lines = [header]
    stream = s.get("stream")
    what = "searches" if stream else "calls"
    if s["mode"] == "open":
        lines.append(f"  offered {s['offered_rate']:.1f}/s   sent {s['send_rate']:.1f}/s   achieved "
                     f"{s['achieved_rate']:.1f}/s (answered, ok)")
    else:
        lines.append(f"  {s['concurrency']} {'streams' if stream else 'clients'}   achieved "
                     f"{s['achieved_rate']:.1f}/s (answered, ok)")
    c = s["calls"]
    lines.append(f"  {what}: {c['sent']:,} in the window, {c['ok']:,} ok, {c['failed']:,} failed"
                 + (f", {c['unfinished']} unfinished" if c["unfinished"] else "")
                 + (f"; answers checked against idle answers: {c['checked']:,}, wrong: {c['wrong_answers']}"
                    if c["checked"] else ""))
    lines.append(f"  latency ms (ok {what}, n={s['latency_ms']['count']:,}):  {_lat_line(s['latency_ms'])}")
    if c["failed"]:
        lines.append(f"  latency ms (all {what}):            {_lat_line(s['latency_all_ms'])}")
        for code, n in s["errors"].items():
            msg = s["error_messages"].get(code, "")
            lines.append(f"  errors {code}: {n:,}" + (f"  ({msg[:100]})" if msg else ""))
    else:
        lines.append("  errors: none")
    if stream:
        lines.append(f"  streams: {stream['opened']:,} opened, {stream['broken']:,} broken, at most {stream['window']} "
                     f"searches in flight on each; {stream['searches_sent']:,} searches sent over them in the run, "
                     f"{stream['searches_answered']:,} answered")
        for code, n in stream["errors"].items():
            msg = stream["error_messages"].get(code, "")
            lines.append(f"  broken streams {code}: {n:,}" + (f"  ({msg[:100]})" if msg else ""))
    if len(s["per_op"]) > 1:
        for op, lat in s["per_op"].items():
            errs = sum(lat["errors"].values())
            lines.append(f"    {op:8s} n={lat['count']:<8,} p50 {fmt_ms(lat['p50'])}  p99 {fmt_ms(lat['p99'])}  "
                         f"max {fmt_ms(lat['max'])}" + (f"  errors {errs}" if errs else ""))
    extra = []
    if "send_lag_ms" in s:
        extra.append(f"send lag p50 {fmt_ms(s['send_lag_ms']['p50'])} ms, p99 {fmt_ms(s['send_lag_ms']['p99'])} ms")
    if s["generator_cpu"]:
        extra.append("generator CPU " + ", ".join(f"{c:.0%}" for c in s["generator_cpu"]) + " of a core")
    if extra:
        lines.append("  " + "; ".join(extra))
    if s.get("server_rss"):
        r = s["server_rss"]
        lines.append(f"  server memory, {r.get('label', 'RSS')}: start {r['start_mib']} MiB, end {r['end_mib']} MiB, "
                     f"max {r['max_mib']} MiB, "
                     f"growth {r['growth_mib']:+} MiB ({r['samples']} samples)")
    for w in s["warnings"]:
        lines.append(f"  warning: {w}")
    if s.get("command"):
        lines.append(f"  reproduce: {s['command']}")
    return "\n".join(lines)


def format_sweep(sweep: dict, header: str) -> str:
    lines = [header, "  offered/s  achieved/s    p50 ms    p90 ms    p99 ms  p99.9 ms   failed  note"]
    for s in sweep["steps"]:
        lat = s["latency_ms"]
        note = "saturated: " + "; ".join(s["saturated_because"]) if s["saturated"] else ""
        if s["generator_bound"]:
            note += " (generator-bound)"
        lag = (s.get("send_lag_ms") or {}).get("p99")
        if lag is not None and lag > 50:
            note += f" (the generator was held up too: send lag p99 {lag:.0f} ms)"
        lines.append(f"  {s['offered_rate']:9.0f}  {s['achieved_rate']:10.1f}  {fmt_ms(lat['p50']):>8}  "
                     f"{fmt_ms(lat['p90']):>8}  {fmt_ms(lat['p99']):>8}  {fmt_ms(lat['p99.9']):>8}  "
                     f"{s['calls']['failed']:7d}  {note}")
    sat = sweep["saturation"]
    if sat["sustainable_rate"] is not None:
        lb = sat["latency_below_ms"]
        lines.append(f"  saturation: the server kept up with {sat['sustainable_rate']:g}/s (achieved "
                     f"{sat['sustainable_achieved']:.0f}/s; p50 {fmt_ms(lb['p50'])} ms, p99 {fmt_ms(lb['p99'])} ms)"
                     + (f" and not with {sat['first_saturated_rate']:g}/s" if sat["reached"] else
                        " and with every rate offered: the saturation point was not reached")
                     + f"; peak achieved {sat['peak_achieved_rate']:.0f}/s; saturated: {sat['rule']}")
    else:
        lines.append("  saturation: already saturated at the lowest rate offered")
    if sat["transient_saturation_rates"]:
        lines.append("  transient saturation below the knee at " + ", ".join(
            f"{r:g}/s" for r in sat["transient_saturation_rates"]) + " (not taken for the knee)")
    return "\n".join(lines)
