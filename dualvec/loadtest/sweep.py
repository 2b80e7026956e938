"""``--sweep``: open-loop steps of rising rate, each judged saturated or not, and the saturation point."""
from __future__ import annotations

import logging
import math

from dualvec.loadtest.driver import Runner
from dualvec.loadtest.errors import LoadtestError
from dualvec.loadtest.histogram import latency_ms
from dualvec.loadtest.report import fmt_ms, summarize

log = logging.getLogger("dualvec.loadtest")


def parse_sweep(spec: str) -> list[float] | None:
    """'auto' -> None (rates chosen after a probe); 'START:STOP:STEP' -> the rates; 'A,B,C' -> those."""
    if spec == "auto":
        return None
    try:
        if ":" in spec:
            start, stop, step = (float(x) for x in spec.split(":"))
            if start <= 0 or step <= 0 or stop < start:
                raise ValueError
            return [round(start + i * step, 3) for i in range(int(math.floor((stop - start) / step + 1e-9)) + 1)]
        rates = [float(x) for x in spec.split(",")]
        if not rates or min(rates) <= 0:
            raise ValueError
        return sorted(rates)
    except ValueError:
        raise LoadtestError(f"--sweep {spec!r}: expected 'auto', START:STOP:STEP (e.g. 200:3000:200) or a list of "
                            f"rates (e.g. 100,500,1000)") from None


def _nice(x: float) -> float:
    if x <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(x))
    return round(x / mag * 4) / 4 * mag if x >= 10 else round(x, 1)


def judge_steps(steps: list[dict], slo_ms: float | None) -> str:
    """Mark each sweep step saturated or not (in place) and return the latency rule used. A step is saturated
    when achieved < 95% of offered, more than 1% of calls failed, or its latency broke the rule: p99 above
    ``slo_ms`` when given, otherwise p50 above 5x the lowest p50 of the sweep (and above 5 ms). The automatic rule
    reads the median because queueing past capacity lifts it by orders of magnitude, while a p99 on a shared
    machine also jumps whenever another process takes the cores."""
    p50s = [s["latency_ms"]["p50"] for s in steps if s["latency_ms"]["p50"] is not None]
    if slo_ms is not None:
        rule, key, bound = f"p99 above {slo_ms:g} ms", "p99", slo_ms
    else:
        bound = round(max(5.0 * min(p50s), 5.0), 3) if p50s else 5.0
        rule, key = f"p50 above {bound:g} ms (5x the lowest p50, at least 5 ms)", "p50"
    for s in steps:
        reasons = []
        if s["achieved_rate"] < 0.95 * s["offered_rate"]:
            reasons.append("achieved < 95% of offered")
        if s["error_rate"] > 0.01:
            reasons.append(f"{s['error_rate']:.1%} of calls failed")
        value = s["latency_ms"][key]
        if value is None or value > bound:
            reasons.append(f"{key} above {bound:g} ms")
        s["saturated"] = bool(reasons)
        s["saturated_because"] = reasons
    return rule


def saturation_of(steps: list[dict], rule: str) -> dict:
    """The saturation point: the first step of the saturated run that ends the sweep, and the last step before
    it. Saturated steps below that run were transient (typically the machine stalled: their send lag says whether
    the generator was held up too) and are listed apart, not taken for the knee."""
    first = None
    for i in range(len(steps) - 1, -1, -1):
        if not steps[i]["saturated"]:
            break
        first = i
    below_steps = steps[:first] if first is not None else steps
    unsaturated = [s for s in below_steps if not s["saturated"]]
    below = unsaturated[-1] if unsaturated else None
    return {
        "rule": rule,
        "first_saturated_rate": steps[first]["offered_rate"] if first is not None else None,
        "sustainable_rate": below["offered_rate"] if below else None,
        "sustainable_achieved": below["achieved_rate"] if below else None,
        "latency_below_ms": {k: below["latency_ms"][k] for k in ("p50", "p90", "p99", "p99.9")} if below else None,
        "peak_achieved_rate": max((s["achieved_rate"] for s in steps), default=None),
        "transient_saturation_rates": [s["offered_rate"] for s in below_steps if s["saturated"]],
        "reached": first is not None,
    }


def run_sweep(runner: Runner, args, interval: float | None) -> dict:
    rates = parse_sweep(args.sweep)
    probe = None
    if rates is None:
        conc = max(16, 8 * runner.processes)
        log.info("sweep: probing the capacity with %d closed-loop clients for 3 s", conc)
        res = runner.run("closed", duration=3.0, warmup=1.0, deadline=args.deadline, concurrency=conc,
                         seed=args.seed)
        cap = res.completed_ok / 3.0
        probe = {"concurrency": conc, "achieved_rate": round(cap, 1),
                 "latency_ms": latency_ms(res.ok)}
        if cap <= 0:
            raise LoadtestError("sweep: the probe got no answer; is the server overloaded or failing?")
        rates = sorted({_nice(cap * f) for f in (0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)})
        log.info("sweep: closed-loop capacity about %.0f/s; offering %s", cap, ", ".join(f"{r:g}" for r in rates))
    steps: list[dict] = []
    consecutive = 0
    for n, rate in enumerate(rates, 1):
        res = runner.run("open", duration=args.duration, warmup=args.warmup, deadline=args.deadline, rate=rate,
                         arrivals=args.arrivals, interval=interval, seed=args.seed + n, check=args.check)
        s = summarize(res, mode="open", duration=args.duration, warmup=args.warmup, rate=rate, series=False,
                      stream_window=runner.stream_window)
        s["generator_bound"] = s["send_rate"] < 0.98 * rate
        steps.append(s)
        judge_steps(steps, args.slo_ms)  # with what is known so far: to decide when to stop
        reasons = s["saturated_because"]
        log.info("sweep %d/%d: offered %g/s achieved %.0f/s p50 %s p99 %s ms, %d failed%s", n, len(rates), rate,
                 s["achieved_rate"], fmt_ms(s["latency_ms"]["p50"]), fmt_ms(s["latency_ms"]["p99"]),
                 s["calls"]["failed"], f"  SATURATED ({'; '.join(reasons)})" if reasons else "")
        consecutive = consecutive + 1 if reasons else 0
        if consecutive >= 2:
            break
    rule = judge_steps(steps, args.slo_ms)  # again with the whole sweep's lowest p50
    return {"probe": probe, "steps": steps, "saturation": saturation_of(steps, rule)}
