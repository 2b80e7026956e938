"""The `dualvec` command. Each subcommand parses its options into a frozen config here, at the edge, and hands it
to the module that does the work. Errors print one line on stderr and exit non-zero (a traceback with --debug)."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

from dualvec import __version__
from dualvec.cli.credentials import add_credential_options
from dualvec.cli.defaults import default_of, resolve_defaults
from dualvec.kernel.errors import DualvecError

log = logging.getLogger("dualvec")

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # what a shell reports for a command that SIGPIPE ended: its reader went away (| head)

# where the option defaults live (dualvec.cli.defaults): each is written once, in the config it configures
TRAIN = "dualvec.indexer.training:TrainConfig"
BUILD = "dualvec.indexer.build:BuildConfig"
TUNING = "dualvec.kernel.manifest:TuningConfig"
TABLES = "dualvec.indexer.answer_tables:TableConfig"
SERVER = "dualvec.server.app:ServerConfig"
SEARCH = "dualvec.kernel.search:SearchQuery"
CLIENT = "dualvec.client:Client"
RANK = "dualvec.cli.rank:RankConfig"
EVALUATE = "dualvec.evaluation:EvaluateConfig"
UINT32_MAX = 2**32 - 1  # k and restrict_vocab travel as uint32


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
    from dualvec.indexer.answer_tables import TableConfig
    from dualvec.cli.info import seconds

    started = time.perf_counter()  # the whole build: reading the source, indexing, tuning, writing
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
                                          eval_queries=args.eval_queries),
                      tables=TableConfig(seconds=args.table_seconds, words=args.table_words))
    manifest = build_bundle(source, output, cfg)
    print(f"built {output}: {manifest.vocab_size:,} words x {manifest.dim} dims, spaces "
          f"{', '.join(s.upper() for s in manifest.spaces)}, in {seconds(time.perf_counter() - started)}")
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
                       max_batch=args.max_batch, max_results=args.max_results, max_words=args.max_words,
                       max_word_bytes=args.max_word_bytes, max_documents=args.max_documents,
                       max_document_tokens=args.max_document_tokens, max_query_tokens=args.max_query_tokens,
                       max_message_bytes=args.max_message_bytes, workers=args.workers, max_queue=args.max_queue,
                       max_streams=args.max_streams,
                       checksums=not args.skip_checksums, grace_seconds=args.grace, batch_size=args.batch_size,
                       concurrent_batches=args.concurrent_batches, prefault=not args.no_prefault, cpus=args.cpus,
                       processes=args.processes, auth_token_file=args.auth_token_file, tls_cert=args.tls_cert,
                       tls_key=args.tls_key, tls_client_ca=args.tls_client_ca, metrics_port=args.metrics_port,
                       drain_delay=args.drain_delay, health_port=args.health_port,
                       max_connection_age=args.max_connection_age, watch=args.watch)
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


class Parser(argparse.ArgumentParser):
    """argparse whose refusals are one line, "dualvec query: error: argument -k: ...", exit 2 (the usage is in
    --help). Subcommand parsers are of the same class."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def whole_number(low: int, high: int | None = None, *, meaning: str = ""):
    """An argparse type: an integer from ``low`` to ``high`` (None: no upper bound); the refusal names the range."""
    span = f"from {low} to {high}" if high is not None else f"of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a whole number {span}{meaning}, got {text!r}")
        return value

    return parse


def number(low: float, *, above: bool = False):
    """An argparse type: a finite number >= ``low`` (> ``low`` with above=True)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"must be a number {'above' if above else 'of at least'} {low:g}, "
                                             f"got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dualvec", description="Serve both embedding spaces (IN and OUT) of a word2vec model.")
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
    p.add_argument("--dim", type=whole_number(1), default=default_of(TRAIN, "dim"),
                   help="vector dimension (default %(default)s)")
    p.add_argument("--window", type=whole_number(1), default=default_of(TRAIN, "window"),
                   help="context window (default %(default)s)")
    p.add_argument("--min-count", type=whole_number(1), default=default_of(TRAIN, "min_count"),
                   help="ignore rarer words (default %(default)s)")
    p.add_argument("--epochs", type=whole_number(1), default=default_of(TRAIN, "epochs"),
                   help="passes over the corpus (default %(default)s); a small corpus needs more: train warns "
                        "when the vectors would come out all alike, and says how many")
    algorithm = p.add_mutually_exclusive_group()
    algorithm.add_argument("--sg", dest="sg", action="store_const", const=True,
                           help="skip-gram, the default: each word predicts its neighbours; slower per epoch than "
                                "CBOW, and needs about 2.5 times fewer passes over a word for useful vectors")
    algorithm.add_argument("--cbow", dest="sg", action="store_const", const=False,
                           help="CBOW: the averaged neighbours predict the word; faster per epoch, fine on large "
                                "corpora, on a small one it needs about 2.5 times the epochs of skip-gram")
    p.set_defaults(sg=default_of(TRAIN, "sg"))
    p.add_argument("--negative", type=int, default=default_of(TRAIN, "negative"),
                   help="negative samples, > 0 (default %(default)s)")
    p.add_argument("--sample", type=number(0.0), default=default_of(TRAIN, "sample"),
                   help="down-sampling of frequent words (default %(default)s)")
    p.add_argument("--workers", type=whole_number(0), default=default_of(TRAIN, "workers"),
                   help="training threads (default 0: every core)")
    p.add_argument("--seed", type=int, default=default_of(TRAIN, "seed"), help="random seed (default %(default)s)")
    p.add_argument("--tokenizer", default=default_of(TRAIN, "tokenizer"), choices=("simple", "lower", "whitespace"),
                   help="how lines are split into tokens (default %(default)s; simple: lowercase letters and "
                        "digits)")
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
    p.add_argument("--index", default=default_of(BUILD, "index"),
                   help="auto (exact below 20k words, an HNSW graph above), flat, hnsw, ivf, ivfpq, or a FAISS "
                        "factory string (inner product; scalar quantizers get rows zero-padded to a multiple of 8)")
    p.add_argument("--target-recall", type=float, default=default_of(TUNING, "target_recall"),
                   help="recall@10 each pair is tuned to (%(default)s)")
    p.add_argument("--tune-queries", type=whole_number(1), default=default_of(TUNING, "tune_queries"),
                   help="tuning queries per distribution (%(default)s)")
    p.add_argument("--eval-queries", type=whole_number(1), default=default_of(TUNING, "eval_queries"),
                   help="held-out queries per distribution (%(default)s)")
    p.add_argument("--in-only", action="store_true", help="accept a source without OUT; the bundle has IN only")
    p.add_argument("--tokenizer", choices=("simple", "lower", "whitespace"),
                   help="tokenizer for DESM text (default: what `dualvec train` recorded, else simple)")
    p.add_argument("--threads", type=whole_number(0), default=default_of(BUILD, "threads"),
                   help="FAISS threads while building (default 0: all)")
    tables = p.add_mutually_exclusive_group()
    tables.add_argument("--table-seconds", type=number(0), default=default_of(TABLES, "seconds"), metavar="SECONDS",
                        help="build time for answer tables: each indexed pair's answers to one-word queries, most "
                             "frequent words first, served as a lookup (%(default)s; 0: none)")
    tables.add_argument("--table-words", type=whole_number(0), metavar="N",
                        help="tabulate exactly the N most frequent words of every indexed pair, however long it "
                             "takes (the whole vocabulary when N is at least its size; 0: none)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("info", parents=[common], help="show what is inside a bundle")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--skip-checksums", action="store_true", help="check file sizes only, not sha256")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("serve", parents=[common], help="serve bundles over gRPC")
    p.add_argument("bundle", nargs="+", help="bundle directory; several are served by name (the first is default)")
    p.add_argument("--host", default=default_of(SERVER, "host"), help="address to bind (%(default)s)")
    p.add_argument("--port", type=int, default=default_of(SERVER, "port"), help="0 picks a free port (%(default)s)")
    limits = p.add_argument_group("limits of a request (past one: INVALID_ARGUMENT naming the field and the limit)")
    limits.add_argument("--max-k", type=whole_number(1, UINT32_MAX), default=default_of(SERVER, "max_k"),
                        help="largest k a request may ask for (%(default)s)")
    limits.add_argument("--max-batch", type=whole_number(1), default=default_of(SERVER, "max_batch"),
                        help="most requests in one BatchSearch (%(default)s)")
    limits.add_argument("--max-results", type=whole_number(1), default=default_of(SERVER, "max_results"),
                        metavar="N", help="most neighbours one BatchSearch may ask for in all, the sum of its k "
                        "(%(default)s: the largest answer then fits a gRPC client's default 4 MiB; raise it only "
                        "for clients that raise theirs)")
    limits.add_argument("--max-words", type=whole_number(1), default=default_of(SERVER, "max_words"), metavar="N",
                        help="most words in one query, in one GetVectors, pairs in one Similarity (%(default)s)")
    limits.add_argument("--max-word-bytes", type=whole_number(1), default=default_of(SERVER, "max_word_bytes"),
                        metavar="BYTES", help="longest word a request may name, in UTF-8 bytes (%(default)s)")
    limits.add_argument("--max-documents", type=whole_number(1), default=default_of(SERVER, "max_documents"),
                        metavar="N", help="most documents in one ScoreDocuments (%(default)s)")
    limits.add_argument("--max-document-tokens", type=whole_number(1),
                        default=default_of(SERVER, "max_document_tokens"), metavar="N",
                        help="most tokens in one document of ScoreDocuments (%(default)s; text is refused "
                             "untokenized above 64 characters a token)")
    limits.add_argument("--max-query-tokens", type=whole_number(1), default=default_of(SERVER, "max_query_tokens"),
                        metavar="N", help="most tokens in the query of ScoreDocuments (%(default)s)")
    limits.add_argument("--max-message-bytes", type=whole_number(1024, 2**31 - 1),
                        default=default_of(SERVER, "max_message_bytes"), metavar="BYTES",
                        help="largest request message; gRPC refuses a larger one with RESOURCE_EXHAUSTED "
                             "(%(default)s)")
    p.add_argument("--workers", type=int, default=default_of(SERVER, "workers"),
                   help="gRPC worker threads (%(default)s)")
    p.add_argument("--max-queue", type=int, default=default_of(SERVER, "max_queue"),
                   help="calls admitted at once; more are refused with RESOURCE_EXHAUSTED (%(default)s)")
    p.add_argument("--max-streams", type=whole_number(1), default=default_of(SERVER, "max_streams"), metavar="N",
                   help="SearchStream calls open at once, their searches admitted by cost like calls; more are "
                        "refused with RESOURCE_EXHAUSTED (%(default)s)")
    p.add_argument("--batch-size", type=int, default=default_of(SERVER, "batch_size"),
                   help="concurrent searches answered by one FAISS call; 1 turns batching off (%(default)s)")
    p.add_argument("--concurrent-batches", type=int, default=default_of(SERVER, "concurrent_batches"),
                   help="FAISS calls running at once (%(default)s)")
    p.add_argument("--grace", type=float, default=default_of(SERVER, "grace_seconds"),
                   help="seconds in-flight calls get at shutdown (%(default)s)")
    p.add_argument("--drain-delay", type=float, default=default_of(SERVER, "drain_delay"), metavar="SECONDS",
                   help="on SIGTERM, health turns NOT_SERVING and calls are still answered this long, for probes "
                        "and clients to move elsewhere, before new calls are refused and --grace begins "
                        "(%(default)s)")
    p.add_argument("--health-port", type=int, metavar="PORT",
                   help="also serve gRPC health alone, in plaintext, on this port: for Kubernetes' gRPC probes, "
                        "which cannot speak TLS (default: none)")
    p.add_argument("--max-connection-age", type=float, default=default_of(SERVER, "max_connection_age"),
                   metavar="SECONDS",
                   help="close each client connection after this long (calls in flight get --grace), so that "
                        "clients resolve the address again and find new replicas; 0 = never (%(default)s)")
    p.add_argument("--skip-checksums", action="store_true",
                   help="check file sizes only at start, not sha256 (a reload always checks both)")
    p.add_argument("--watch", type=float, default=default_of(SERVER, "watch"), metavar="SECONDS",
                   help="look at each bundle path this often and reload a bundle that changed there (a symlink "
                        "flipped, a directory renamed into place), as SIGHUP does; 0 = SIGHUP only (%(default)s)")
    p.add_argument("--cpus", default=default_of(SERVER, "cpus"), metavar="LIST",
                   help="CPUs the server runs on: 'auto' (one CPU on machines with 2 or fewer, where that measured "
                        "faster; the OS decides on bigger ones), 'all', or a list like '1', '0,2', '0-3'")
    p.add_argument("--processes", type=int, default=default_of(SERVER, "processes"), metavar="N",
                   help="server processes sharing the port and one loaded bundle, each on its own CPU of --cpus: "
                        "more throughput under many clients, the same latency for one; 0 = auto: one per CPU on "
                        "machines with 2 or fewer, where that measured faster, else 1 (%(default)s)")
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
    p.add_argument("-k", type=whole_number(1, UINT32_MAX), default=default_of(SEARCH, "k"),
                   help="neighbours (%(default)s); a server refuses more than its --max-k")
    p.add_argument("--addr", default=default_of(CLIENT, "address"),
                   help="server address (%(default)s), or any gRPC target: dns:///HOST:PORT, ipv4:A:P,B:P")
    p.add_argument("--exact", action="store_true", help="exhaustive search (ground truth)")
    p.add_argument("--restrict-vocab", type=whole_number(0, UINT32_MAX, meaning=" (0: the whole vocabulary)"),
                   default=default_of(SEARCH, "restrict_vocab"), metavar="N",
                   help="only the N most frequent words (%(default)s: all of them)")
    p.add_argument("--model", default="", help="bundle name on a server serving several")
    p.add_argument("--timeout", type=number(0.0, above=True), default=default_of(CLIENT, "timeout"),
                   help="seconds (%(default)s)")
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
    where.add_argument("--addr", help=f"server address (default {default_of(CLIENT, 'address')})")
    where.add_argument("--bundle", help="score locally on this bundle")
    p.add_argument("--space", default=default_of(RANK, "space"), choices=("in-out", "in-in"),
                   help="DESM variant to rank by (%(default)s)")
    p.add_argument("--bm25-weight", type=float, default=default_of(RANK, "bm25_weight"),
                   help="w in (1-w) DESM + w BM25 (%(default)s)")
    p.add_argument("--model", default="", help="bundle name on a server serving several")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_service_config_option(p)
    add_credential_options(p)
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("evaluate", parents=[common], help="word similarity, analogies, DESM and recall of bundles")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--analogy-limit", type=whole_number(0), default=default_of(EVALUATE, "analogy_limit"),
                   help="at most N analogy questions (%(default)s; 0 = all)")
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
    try:
        return _main(argv)
    except BrokenPipeError:
        return _stdout_closed()


def _stdout_closed() -> int:
    """The reader of stdout went away (`dualvec info BUNDLE | head`): end quietly, as a Unix tool that SIGPIPE
    ends. stdout is pointed at /dev/null so that flushing it at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor behind sys.stdout (a caller's capture)
        pass
    return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "loadtest":  # its own parser takes every option, --help included
        from dualvec.loadtest import main as loadtest_main

        return loadtest_main(argv[1:])
    parser = build_parser()
    args = resolve_defaults(parser.parse_args(negatives_as_options(argv)))
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
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that went away is seen here, while main() can still end quietly
        return code
    except BrokenPipeError:
        raise  # main() ends quietly; not an error of the command
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
