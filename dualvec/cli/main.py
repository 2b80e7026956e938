"""The `dualvec` command. Each subcommand parses its options into a frozen config here, at the edge, and hands it
to the module that does the work. Errors print one line on stderr and exit non-zero (a traceback with --debug)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from dualvec import __version__
from dualvec.cli.credentials import add_credential_options
from dualvec.kernel.errors import DualvecError

log = logging.getLogger("dualvec")

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


# ------------------------------------------------------------------------------------------------------ subcommands

def cmd_train(args: argparse.Namespace) -> int:
    from dualvec.indexer.training import TrainConfig, train

    cfg = TrainConfig(dim=args.dim, window=args.window, min_count=args.min_count, epochs=args.epochs, sg=args.sg,
                      negative=args.negative, sample=args.sample, workers=args.workers, seed=args.seed,
                      tokenizer=args.tokenizer, quiet=args.quiet)
    out = train(args.corpus, args.output, cfg, force=args.force)
    print(f"saved {out}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """`dualvec build`. A gensim model file is a pickle: building from an untrusted one runs its code; word2vec files
    (--in-vectors/--out-vectors) and fastText .bin are read without pickle, and bundles load without it."""
    from dualvec.indexer.build import BuildConfig, build_bundle
    from dualvec.indexer.model_readers import read_model, read_vector_pair
    from dualvec.indexer.tuning import TuningConfig

    if args.model and (args.in_vectors or args.out_vectors):
        raise DualvecError("give either MODEL or --in-vectors/--out-vectors, not both")
    if not args.model and not args.in_vectors:
        raise DualvecError("nothing to build: give MODEL (a gensim model or fastText .bin) or --in-vectors and "
                           "--out-vectors")
    if not (0.0 < args.target_recall <= 1.0):
        raise DualvecError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    output = Path(args.output)
    if output.exists() and not args.force:
        raise DualvecError(f"{output} already exists; pass --force to replace it")
    if args.model:
        source = read_model(args.model, in_only=args.in_only)
    else:
        source = read_vector_pair(args.in_vectors, args.out_vectors, in_only=args.in_only)
    cfg = BuildConfig(index=args.index, in_only=args.in_only, force=args.force, quiet=args.quiet,
                      tokenizer=args.tokenizer, threads=args.threads,
                      tuning=TuningConfig(target_recall=args.target_recall, tune_queries=args.tune_queries,
                                          eval_queries=args.eval_queries))
    manifest = build_bundle(source, output, cfg)
    print(f"built {output}: {manifest['vocab_size']:,} words x {manifest['dim']} dims, spaces "
          f"{', '.join(s.upper() for s in manifest['spaces'])}, in {manifest['build']['seconds']:.1f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from dualvec.kernel.bundle import read_bundle
    from dualvec.cli.info import bundle_summary, format_summary

    bundle = read_bundle(args.bundle, checksums=not args.skip_checksums)
    summary = bundle_summary(bundle)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dualvec.server.app import ServerConfig, serve_forever

    cfg = ServerConfig(bundles=tuple(args.bundle), host=args.host, port=args.port, max_k=args.max_k,
                       max_batch=args.max_batch, workers=args.workers, max_queue=args.max_queue,
                       checksums=not args.skip_checksums, grace_seconds=args.grace, batch_size=args.batch_size,
                       concurrent_batches=args.concurrent_batches, prefault=not args.no_prefault, cpus=args.cpus,
                       processes=args.processes, auth_token_file=args.auth_token_file, tls_cert=args.tls_cert,
                       tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, metrics_port=args.metrics_port,
                       drain_delay=args.drain_delay, health_port=args.health_port,
                       max_connection_age=args.max_connection_age)
    return serve_forever(cfg)


def cmd_query(args: argparse.Namespace) -> int:
    from dualvec.cli.query import run_query

    return run_query(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from dualvec.cli.demo import run_demo

    return run_demo(workdir=args.workdir, keep=args.keep, quiet=args.quiet)


def cmd_rank(args: argparse.Namespace) -> int:
    from dualvec.cli.rank import run_rank

    return run_rank(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dualvec.evaluation import run_evaluate

    return run_evaluate(args)


# ----------------------------------------------------------------------------------------------------------- parser

def add_service_config_option(p: argparse.ArgumentParser) -> None:
    """--service-config, for the commands that call a server (--addr may be any gRPC target, several servers)."""
    p.add_argument("--service-config", metavar="FILE", help="gRPC service config (JSON file) for the channel: load "
                   "balancing over the servers --addr resolves to, and retries; 'none' for gRPC's defaults "
                   "(default: round_robin, UNAVAILABLE retried; docs/scaling.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualvec", description="Serve both embedding spaces (IN and OUT) of a "
                                     "word2vec model.")
    parser.add_argument("--version", action="version", version=f"dualvec {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", parents=[common], help="train word2vec with negative sampling (OUT kept)",
                       description="Train gensim Word2Vec with negative sampling on a text file, one sentence per "
                       "line, and save the full model (syn1neg = OUT kept).")
    p.add_argument("corpus", help="text file, one sentence (document) per line")
    p.add_argument("-o", "--output", required=True, help="model path (gensim .model)")
    p.add_argument("--dim", type=int, default=100, help="vector dimension (default 100)")
    p.add_argument("--window", type=int, default=5, help="context window (default 5)")
    p.add_argument("--min-count", type=int, default=5, help="ignore rarer words (default 5)")
    p.add_argument("--epochs", type=int, default=5, help="passes over the corpus (default 5)")
    p.add_argument("--sg", action="store_true", help="skip-gram (default CBOW)")
    p.add_argument("--negative", type=int, default=5, help="negative samples, > 0 (default 5)")
    p.add_argument("--sample", type=float, default=1e-3, help="down-sampling of frequent words (default 1e-3)")
    p.add_argument("--workers", type=int, default=0, help="training threads (default: every core)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--tokenizer", default="simple", choices=("simple", "lower", "whitespace"),
                   help="how lines are split into tokens (default simple: lowercase letters and digits)")
    p.add_argument("--force", action="store_true", help="replace an existing model")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("build", parents=[common], help="build a two-space bundle from a model",
                       description="Normalize IN and OUT, build one FAISS index per space, tune each space pair "
                       "against exact search, and write a self-describing bundle directory. A gensim model file is a "
                       "pickle: building from an untrusted one runs its code; word2vec files (--in-vectors/"
                       "--out-vectors) and fastText .bin are read without pickle, and bundles load without it.")
    p.add_argument("model", nargs="?", help="gensim full model (Word2Vec/FastText .save(); a pickle: trusted files "
                   "only) or fastText .bin")
    p.add_argument("--in-vectors", help="word2vec-format file (text or binary) of the IN vectors")
    p.add_argument("--out-vectors", help="word2vec-format file (text or binary) of the OUT vectors")
    p.add_argument("-o", "--output", required=True, help="bundle directory to write")
    p.add_argument("--index", default="auto",
                   help="auto (exact below 20k words, an HNSW graph above), flat, hnsw, ivf, ivfpq, or a FAISS "
                        "factory string (inner product; scalar quantizers get rows zero-padded to a multiple of 8)")
    p.add_argument("--target-recall", type=float, default=0.95, help="recall@10 each pair is tuned to (0.95)")
    p.add_argument("--tune-queries", type=int, default=400, help="tuning queries per distribution (400)")
    p.add_argument("--eval-queries", type=int, default=1000, help="held-out queries per distribution (1000)")
    p.add_argument("--in-only", action="store_true", help="accept a source without OUT; the bundle has IN only")
    p.add_argument("--tokenizer", choices=("simple", "lower", "whitespace"),
                   help="tokenizer for DESM text (default: what `dualvec train` recorded, else simple)")
    p.add_argument("--threads", type=int, default=0, help="FAISS threads while building (default: all)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("info", parents=[common], help="show what is inside a bundle")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--skip-checksums", action="store_true", help="check file sizes only, not sha256")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("serve", parents=[common], help="serve bundles over gRPC")
    p.add_argument("bundle", nargs="+", help="bundle directory; several are served by name (the first is default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    p.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask for (1000)")
    p.add_argument("--max-batch", type=int, default=1024, help="most requests in one BatchSearch (1024)")
    p.add_argument("--workers", type=int, default=16, help="gRPC worker threads (16)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="calls admitted at once; more are refused with RESOURCE_EXHAUSTED (256)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="concurrent searches answered by one FAISS call; 1 turns batching off (64)")
    p.add_argument("--concurrent-batches", type=int, default=2, help="FAISS calls running at once (2)")
    p.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get at shutdown (5)")
    p.add_argument("--drain-delay", type=float, default=5.0, metavar="SECONDS",
                   help="on SIGTERM, health turns NOT_SERVING and calls are still answered this long, for probes "
                        "and clients to move elsewhere, before new calls are refused and --grace begins (5)")
    p.add_argument("--health-port", type=int, metavar="PORT",
                   help="also serve gRPC health alone, in plaintext, on this port: for Kubernetes' gRPC probes, "
                        "which cannot speak TLS (default: none)")
    p.add_argument("--max-connection-age", type=float, default=0.0, metavar="SECONDS",
                   help="close each client connection after this long (calls in flight get --grace), so that "
                        "clients resolve the address again and find new replicas; 0 = never (0)")
    p.add_argument("--skip-checksums", action="store_true", help="check file sizes only at load, not sha256")
    p.add_argument("--cpus", default="auto", metavar="LIST",
                   help="CPUs the server runs on: 'auto' (one CPU on machines with 2 or fewer, where that measured "
                        "faster; the OS decides on bigger ones), 'all', or a list like '1', '0,2', '0-3'")
    p.add_argument("--processes", type=int, default=0, metavar="N",
                   help="server processes sharing the port and one loaded bundle, each on its own CPU of --cpus: "
                        "more throughput under many clients, the same latency for one; 0 = auto: one per CPU on "
                        "machines with 2 or fewer, where that measured faster, else 1 (0)")
    p.add_argument("--no-prefault", action="store_true",
                   help="map the vectors' pages on first use instead of at load: a faster start, but early "
                        "queries pay a page fault per row they read (at 1M x 300, 1.7x slower searches)")
    access = p.add_argument_group("who may call, and what the server tells")
    access.add_argument("--auth-token-file", metavar="FILE",
                        help="accept DualVec calls only with 'authorization: Bearer TOKEN' metadata, TOKEN one of "
                             "the file's lines (blank lines and # comments ignored; several for rotation); "
                             "re-read on SIGHUP. Health and reflection stay open")
    access.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate chain (PEM)")
    access.add_argument("--tls-key", metavar="FILE", help="the private key (PEM) of --tls-cert")
    access.add_argument("--tls-client-ca", metavar="FILE",
                        help="mutual TLS: accept only clients presenting a certificate this CA (PEM) signed")
    access.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics on http://HOST:PORT/metrics (0 picks a free port)")
    access.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log lines as text, or as one JSON object per event (text)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("query", parents=[common], help="top-k neighbours from a running server")
    p.add_argument("words", nargs="+", metavar="WORD", help="positive words; prefix with - to subtract (-man)")
    p.add_argument("--negative", action="append", default=[], metavar="WORD",
                   help="a word to subtract (same as writing -WORD)")
    p.add_argument("--from", dest="query_space", default="in", choices=("in", "out"), help="query space (in)")
    p.add_argument("--to", dest="target_space", default="in", choices=("in", "out"), help="searched space (in)")
    p.add_argument("-k", type=int, default=10, help="neighbours (10)")
    p.add_argument("--addr", default="127.0.0.1:50051",
                   help="server address (127.0.0.1:50051), or any gRPC target: dns:///HOST:PORT, ipv4:A:P,B:P")
    p.add_argument("--exact", action="store_true", help="exhaustive search (ground truth)")
    p.add_argument("--restrict-vocab", type=int, default=0, help="only the N most frequent words")
    p.add_argument("--model", default="", help="bundle name on a server serving several")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (10)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_service_config_option(p)
    add_credential_options(p)
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("demo", parents=[common], help="train, build, serve and query a small model end to end")
    p.add_argument("--workdir", help="where to put the model and bundle (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("rank", parents=[common], help="rank documents for a query with DESM and BM25")
    p.add_argument("query", help="query text")
    p.add_argument("documents", help="DOCS.jsonl (objects with id and text or tokens) or DOCS.txt (a line each)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--addr", help="server address")
    where.add_argument("--bundle", help="score locally on this bundle")
    p.add_argument("--space", default="in-out", choices=("in-out", "in-in"), help="DESM variant to rank by")
    p.add_argument("--bm25-weight", type=float, default=0.0, help="w in (1-w) DESM + w BM25 (0)")
    p.add_argument("--model", default="", help="bundle name on a server serving several")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_service_config_option(p)
    add_credential_options(p)
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("evaluate", parents=[common], help="word similarity, analogies, DESM and recall of bundles")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--analogy-limit", type=int, default=0, help="at most N analogy questions (0 = all)")
    p.set_defaults(func=cmd_evaluate)

    from dualvec.cli.neighbors import add_parser as add_neighbors_parser

    add_neighbors_parser(sub, common)

    # listed for --help only: main() hands `dualvec loadtest ...` to dualvec.loadtest before parsing
    sub.add_parser("loadtest", help="load-test a running server (dualvec loadtest --help)", add_help=False)
    return parser


QUERY_OPTIONS = {"-k", "-q", "-h"}


def negatives_as_options(argv: list[str]) -> list[str]:
    """`dualvec query king -man woman`: a word after a single dash is a negative word, not an option."""
    if not argv or argv[0] != "query":
        return argv
    out: list[str] = []
    negatives: list[str] = []  # moved to the end, so that the words around them stay one positional run
    for n, tok in enumerate(argv):
        if tok == "--":  # after it, split_words reads -WORD as a negative word itself
            return out + negatives + argv[n:]
        if len(tok) > 1 and tok[0] == "-" and tok[1] != "-" and tok not in QUERY_OPTIONS and not tok[1:].lstrip(
                ".").replace(".", "", 1).isdigit():
            negatives.append(f"--negative={tok[1:]}")
        else:
            out.append(tok)
    return out + negatives


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "loadtest":  # its own parser takes every option, --help included
        from dualvec.loadtest import main as loadtest_main

        return loadtest_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(negatives_as_options(argv))
    debug = getattr(args, "debug", False)
    level = logging.DEBUG if debug else (logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    if getattr(args, "log_format", "text") == "json":
        from dualvec.server.logging_setup import configure_logging

        configure_logging(level, "json", sys.stderr)
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not debug:
        for noisy in ("faiss", "gensim", "smart_open"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    # SIGTERM interrupts a build like Ctrl-C does, so that nothing half-written is left behind
    if args.command != "serve":
        main_pid = os.getpid()
        signal.signal(signal.SIGTERM, lambda signum, frame: _raise_interrupt(main_pid))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dualvec: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DualvecError as exc:
        if debug:
            raise
        print(f"dualvec {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, MemoryError) as exc:
        if debug:
            raise
        print(f"dualvec {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _raise_interrupt(main_pid: int) -> None:
    if os.getpid() != main_pid:  # a worker process (multiprocessing) that inherited the handler: just end
        os._exit(143)
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
