"""`dualvec loadtest ADDR`: the options, the set-up (server info, vocabulary, request pool, idle answers), the run
and its report; ``main`` returns the exit code."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys

from dualvec.cli.credentials import add_credential_options, client_credentials
from dualvec.cli.main import add_service_config_option
from dualvec.client.credentials import channel_credentials
from dualvec.client.service_config import load_service_config
from dualvec.kernel.errors import DualvecError
from dualvec.loadtest.driver import Runner, Target, auto_interval, idle_answers
from dualvec.loadtest.errors import LoadtestError
from dualvec.loadtest.plots import plot_run, plot_sweep
from dualvec.loadtest.report import format_report, format_sweep, summarize
from dualvec.loadtest.sampling import RssSampler
from dualvec.loadtest.sweep import parse_sweep, run_sweep
from dualvec.loadtest.workload import (DEFAULT_MIX, PAIR_OPS, RankedWords, RequestPool, WorkloadConfig, build_pool,
                                       discover_words, parse_mix, words_from_bundle, words_from_file)

log = logging.getLogger("dualvec.loadtest")

EXIT_OK, EXIT_ERROR, EXIT_FAILED_CALLS = 0, 1, 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dualvec loadtest",
        description="Load-test a running dualvec server. Closed loop (--concurrency N: N clients, each sending its "
        "next call when the last is answered) or open loop (--rate QPS: calls on a fixed schedule, latency from each "
        "call's intended send time, so queueing is never hidden). --sweep steps the rate up and draws the capacity "
        "curve. Percentiles come from mergeable log-linear histograms (0.1% resolution).",
        epilog="examples:  dualvec loadtest 127.0.0.1:50051 --concurrency 8 --duration 5\n"
        "           dualvec loadtest 127.0.0.1:50051 --concurrency 8 --stream --stream-window 32\n"
        "           dualvec loadtest 127.0.0.1:50051 --rate 1000 --duration 20 --plot run.png\n"
        "           dualvec loadtest 127.0.0.1:50051 --sweep auto --processes 2 --plot capacity.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("address", metavar="ADDR", help="server address, HOST:PORT, or any gRPC target naming several "
                   "servers (dns:///HOST:PORT, ipv4:HOST:PORT,HOST:PORT), balanced as --service-config says")
    how = p.add_mutually_exclusive_group()
    how.add_argument("-c", "--concurrency", type=int, help="closed loop with N clients (default: 8, unless --rate "
                     "or --sweep is given)")
    how.add_argument("-r", "--rate", type=float, help="open loop at a fixed rate of QPS calls per second")
    how.add_argument("--sweep", metavar="SPEC", help="open-loop steps of rising rate: 'auto' (after a short "
                     "closed-loop probe), START:STOP:STEP (200:3000:200) or a list (100,500,1000); stops after two "
                     "saturated steps")
    p.add_argument("-d", "--duration", type=float, default=10.0, help="measured seconds (per step with --sweep; 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (per step; 2)")
    p.add_argument("-p", "--processes", type=int, default=1, help="generator processes; their histograms are "
                   "merged (1)")
    p.add_argument("--channels", type=int, default=1, help="gRPC connections per process (1)")
    p.add_argument("--arrivals", choices=("uniform", "poisson"), default="uniform",
                   help="open loop: evenly spaced calls, or a Poisson process (uniform)")
    p.add_argument("--mix", default=DEFAULT_MIX, help="operations and their weights: in-in, in-out, out-in, out-out "
                   "(Search), batch (BatchSearch), desm (ScoreDocuments); e.g. "
                   "'in-in=1,in-out=1,out-in=1,out-out=1,batch=0.1,desm=0.1' (default: the four pairs alike)")
    p.add_argument("--stream", action="store_true", help="send the searches over SearchStream calls instead of "
                   "unary Search: closed loop, one stream per client; open loop, one stream per connection "
                   "(--channels), the schedule's searches dealt in turn; --mix may then name the four pairs only")
    p.add_argument("--stream-window", type=int, default=32, metavar="N", help="with --stream: searches in flight "
                   "on each stream at most; a search waits for room, and open loop counts the wait (32)")
    p.add_argument("-k", "--k", type=int, default=10, help="neighbours per search (10)")
    p.add_argument("--deadline", type=float, default=5.0, help="seconds each call may take (5)")
    p.add_argument("--batch-size", type=int, default=8, help="searches per BatchSearch (8)")
    p.add_argument("--docs", type=int, default=10, help="documents per ScoreDocuments (10)")
    p.add_argument("--doc-length", type=int, default=30, help="tokens per document (30)")
    words = p.add_mutually_exclusive_group()
    words.add_argument("--words", metavar="FILE", help="vocabulary to draw from: a word per line, most frequent "
                       "first (default: discovered through the API)")
    words.add_argument("--bundle", metavar="DIR", help="draw words from this bundle's vocabulary")
    p.add_argument("--zipf", type=float, default=1.0, help="skew of word ranks, P(r) ~ 1/(r+1)^s; 0 = uniform (1)")
    p.add_argument("--pool", type=int, default=2000, help="distinct requests prepared (2000)")
    p.add_argument("--discover", type=int, default=16, help="random-direction searches used to find words below "
                   "the top max_k when the vocabulary is discovered (16)")
    p.add_argument("--model", default="", help="bundle name on a server serving several")
    p.add_argument("--check", action="store_true", help="compare every answer with the idle answer to the same "
                   "request (fetched before the load); a difference counts as a wrong answer")
    p.add_argument("--slo-ms", type=float, help="sweep: a step whose p99 is above this is saturated (default: one "
                   "whose p50 is above 5x the sweep's lowest p50, at least 5 ms)")
    p.add_argument("--server-pid", type=int, help="sample the memory of this process and its children (the "
                   "server's, its worker processes too): PSS summed over the tree, so shared pages count once; "
                   "report its growth")
    p.add_argument("--interval", type=float, help="time-series resolution in seconds (automatic)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--plot", metavar="PNG", help="write latency over time and its distribution (with --sweep: the "
                   "capacity curve)")
    p.add_argument("--fail-on-errors", action="store_true", help=f"exit {EXIT_FAILED_CALLS} when any call failed "
                   "or any answer was wrong")
    p.add_argument("--seed", type=int, default=0, help="random seed of words and schedules (0)")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for the server (10)")
    p.add_argument("--debug", action="store_true", help="tracebacks and debug logs")
    add_credential_options(p)
    add_service_config_option(p)
    return p


def _validate(args) -> None:
    for name in ("duration", "deadline"):
        if getattr(args, name) <= 0:
            raise LoadtestError(f"--{name} must be > 0")
    if args.warmup < 0:
        raise LoadtestError("--warmup must be >= 0")
    if args.concurrency is not None and args.concurrency < 1:
        raise LoadtestError("--concurrency must be >= 1")
    if args.rate is not None and args.rate <= 0:
        raise LoadtestError("--rate must be > 0")
    for name in ("processes", "channels", "k", "batch_size", "docs", "doc_length", "pool"):
        if getattr(args, name) < 1:
            raise LoadtestError(f"--{name.replace('_', '-')} must be >= 1")
    if args.concurrency is not None and args.processes > args.concurrency:
        raise LoadtestError(f"--processes {args.processes} is more than --concurrency {args.concurrency}")
    if args.stream_window < 1:
        raise LoadtestError(f"--stream-window must be >= 1, got {args.stream_window}")
    if args.stream:
        unary = sorted(set(parse_mix(args.mix)) - set(PAIR_OPS))
        if unary:
            raise LoadtestError(f"--stream sends Search requests only: --mix may name {', '.join(PAIR_OPS)}, not "
                                f"{', '.join(unary)}")


def prepare(args, stub, info) -> tuple[RankedWords, RequestPool]:
    """The words to draw from and the request pool, given the server's ModelInfo ``info``."""
    from dualvec.wire import space_names

    if args.words:
        words = words_from_file(args.words)
    elif args.bundle:
        words = words_from_bundle(args.bundle)
    else:
        words = discover_words(stub, info, args.model, args.discover, args.seed, args.deadline)
    if args.k > info.max_k > 0:
        raise LoadtestError(f"--k {args.k} is above the server's limit of {info.max_k}")
    spaces = set(space_names(info.spaces)) or {"in"}
    cfg = WorkloadConfig(mix=parse_mix(args.mix), k=args.k, pool=args.pool, zipf=args.zipf,
                         batch_size=min(args.batch_size, info.max_batch or args.batch_size), docs=args.docs,
                         doc_length=args.doc_length, model=args.model, seed=args.seed)
    return words, build_pool(words, cfg, spaces)


def main(argv: list[str] | None = None) -> int:
    """`dualvec loadtest`; returns the exit code (0; 1 on an error that stopped the run; 3 with --fail-on-errors
    when a call failed or an answer was wrong)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `dualvec loadtest -- --help` passes the separator on
        argv = argv[1:]
    args = parser.parse_args(argv)
    args.command_line = "dualvec loadtest " + " ".join(shlex.quote(a) for a in argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return _run(args)
    except LoadtestError as exc:
        if args.debug:
            raise
        print(f"dualvec loadtest: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("dualvec loadtest: interrupted", file=sys.stderr)
        return 130


def _run(args) -> int:
    import grpc

    from dualvec.v1 import dualvec_pb2 as pb
    from dualvec.v1 import dualvec_pb2_grpc as pb_grpc

    _validate(args)
    if args.concurrency is None and args.rate is None and args.sweep is None:
        args.concurrency = 8
    if args.sweep is not None:
        parse_sweep(args.sweep)  # fail early on a bad spec
    try:
        access = client_credentials(args)
        channel_credentials(access["tls_ca"], access["tls_cert"], access["tls_key"])  # PEM files readable
        load_service_config(args.service_config)  # a bad one is named before anything starts
        access["service_config"] = args.service_config
    except DualvecError as exc:
        raise LoadtestError(str(exc)) from None
    # set-up on a connection of its own: server info, the vocabulary, the request pool, idle answers
    setup = Target(args.address, access=access)
    try:
        setup.wait_ready(args.connect_timeout, args.address)
        stub = pb_grpc.DualVecStub(setup.channels[0])
        try:
            info = stub.GetInfo(pb.GetInfoRequest(model=args.model), timeout=args.connect_timeout)
        except grpc.RpcError as exc:
            raise LoadtestError(f"GetInfo failed: {exc.code().name}: {exc.details()}") from None
        words, pool = prepare(args, stub, info)
        log.info("server %s: %r, %s words x %d dims; %d requests prepared (%s), words from %s", args.address,
                 info.model, f"{info.vocab_size:,}", info.dim, len(pool.entries),
                 ", ".join(f"{op} {w:.0%}" for op, w in zip(pool.ops, pool.weights)), words.source)
        expected = None
        if args.check:
            log.info("--check: fetching the idle answers of the %d requests", len(pool.entries))
            expected = idle_answers(setup, pool, args.deadline)
    finally:
        setup.close()

    window = args.stream_window if args.stream else 0
    runner = Runner(args.address, pool, expected, args.processes, args.channels, args.connect_timeout, access,
                    stream_window=window)
    sampler = RssSampler(args.server_pid, every=max(0.5, args.interval or 1.0)) if args.server_pid else None
    context = {"target": args.address, "model": info.model, "vocab_size": int(info.vocab_size), "dim": int(info.dim),
               "processes": runner.processes, "mix": args.mix, "k": args.k, "deadline_s": args.deadline,
               "arrivals": args.arrivals, "words": words.source, "command": args.command_line,
               "transport": "SearchStream" if args.stream else "unary"}
    try:
        if sampler:
            sampler.__enter__()
        try:
            if args.sweep is not None:
                sweep = run_sweep(runner, args, args.interval)
            else:
                mode = "closed" if args.concurrency else "open"
                interval = args.interval or auto_interval(args.warmup + args.duration)
                log.info("%s for %g s (+%g s warm-up) with %d process(es)%s", f"{args.concurrency} closed-loop "
                         f"clients" if mode == "closed" else f"open loop at {args.rate:g}/s ({args.arrivals})",
                         args.duration, args.warmup, runner.processes,
                         f", over SearchStream ({window} in flight per stream)" if window else "")
                res = runner.run(mode, duration=args.duration, warmup=args.warmup, deadline=args.deadline,
                                 concurrency=args.concurrency or 0, rate=args.rate or 0.0, arrivals=args.arrivals,
                                 interval=interval, seed=args.seed, check=args.check)
        finally:
            if sampler:
                sampler.__exit__(None, None, None)
    finally:
        runner.close()
    rss = sampler.summary() if sampler else None
    if args.sweep is not None:
        return _report_sweep(sweep, args, context, rss)
    summary = summarize(res, mode=mode, duration=args.duration, warmup=args.warmup, concurrency=args.concurrency or 0,
                        rate=args.rate or 0.0, interval=interval, stream_window=window)
    summary.update(context)
    if rss:
        summary["server_rss"] = rss
    title = ((f"{args.concurrency} clients (closed loop)" if mode == "closed" else
              f"open loop at {args.rate:g}/s ({args.arrivals})")
             + (f" over SearchStream, {window} in flight per stream" if window else "")
             + f", {args.duration:g} s after {args.warmup:g} s warm-up, {runner.processes} process(es), mix {args.mix}")
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(format_report(summary, f"dualvec loadtest {args.address} ({info.model}): {title}"))
    if args.plot:
        plot_run(res, summary, args.plot, f"{info.model}: {title}")
        log.info("wrote %s", args.plot)
    failed = summary["calls"]["failed"] + summary["calls"]["wrong_answers"] + summary["calls"]["unfinished"]
    if summary["stream"]:
        failed += summary["stream"]["broken"]
    return EXIT_FAILED_CALLS if args.fail_on_errors and failed else EXIT_OK


def _report_sweep(sweep: dict, args, context: dict, rss: dict | None) -> int:
    out = {"sweep": sweep, **context, "duration_s": args.duration, "warmup_s": args.warmup}
    if rss:
        out["server_rss"] = rss
    title = (f"sweep of open-loop rates, {args.duration:g} s per step after {args.warmup:g} s warm-up, "
             f"{args.processes} process(es), mix {args.mix}"
             + (f", over SearchStream ({args.stream_window} in flight per stream)" if args.stream else ""))
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(format_sweep(sweep, f"dualvec loadtest {args.address} ({context['model']}): {title}"))
        if rss:
            print(f"  server memory, {rss['label']}: start {rss['start_mib']} MiB, end {rss['end_mib']} MiB, "
                  f"max {rss['max_mib']} MiB")
        print(f"  reproduce: {context['command']}")
    if args.plot:
        plot_sweep(sweep, args.plot, f"{context['model']}: {title}")
        log.info("wrote %s", args.plot)
    failed = sum(s["calls"]["failed"] + s["calls"]["wrong_answers"] for s in sweep["steps"] if not s["saturated"])
    return EXIT_FAILED_CALLS if args.fail_on_errors and failed else EXIT_OK

