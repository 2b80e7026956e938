"""`dualvec loadtest ADDR`: a load generator for a dualvec server (closed loop, open loop without coordinated
omission, rate sweeps; unary calls or SearchStream), with percentiles read from mergeable histograms. Modules:

    errors      LoadtestError, the one exception
    histogram   Histogram (log-linear, HdrHistogram layout, mergeable) and latency_ms
    workload    the words drawn from, the --mix of operations, the pool of serialized requests, same_answer
    driver      a phase in one process (run_phase), the generator processes (Runner), PhaseResult, Target
    streams     --stream: a phase's searches over SearchStream calls (run_stream_phase)
    sampling    RssSampler: the server's memory during the run (PSS of its whole process tree)
    sweep       --sweep: the rates, saturated steps, the saturation point
    report      summarize (the JSON report) and the text reports of a run and of a sweep
    plots       PNG plots of a run and of a sweep's capacity curve
    cli         the options, the set-up and main

See docs/loadtest.md.
"""
from dualvec.loadtest.cli import main

__all__ = ["main"]
