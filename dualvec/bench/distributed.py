"""Rates of a neighbour job on a distributed engine beside `dualvec neighbors` (docs/large-scale.md, "Beyond one
machine"); `python scripts/distributed_rates.py --help`.

The job: N query words drawn uniformly with replacement from a bundle's vocabulary (seeded), written as Parquet
files that every engine reads; the top-k of each in one pair, written as Parquet. Each run is a fresh process:

- ``ray``: a local Ray cluster of --cpus CPUs, dualvec.distributed.ray_data.bundle_neighbors with a pool of W
  actors of one CPU (one FAISS thread) each;
- ``spark``: a local Spark session, ``local[W]``, the same BundleNeighbors in ``mapInArrow`` (one Python worker
  per task slot, one FAISS thread each);
- ``neighbors``: `dualvec neighbors --words` in one process with W FAISS threads (no engine);
- ``fleet``: the local Ray cluster, dualvec.distributed.ray_data.fleet_neighbors with W actors asking the servers
  at --address (serving the same bundle) in BatchSearch calls of --batch words (at most 1,024).

Each prints one JSON line: the engine's start-up seconds (cluster or session up, a trivial job done), the job's
seconds (the words read, searched and written), rows and queries/s; the parent runs them in turn and prints a
table. The engine must be importable by the Python running this (pyspark needs a JVM on the path).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ENGINES = ("ray", "spark", "neighbors", "fleet")


def make_queries(bundle: str, n: int, directory: Path, *, seed: int = 0, files: int = 64) -> list[str]:
    """N words drawn uniformly with replacement from the vocabulary, as ``files`` Parquet files in directory
    (column "word"); returns the words."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dualvec.kernel.bundle import VOCAB, read_vocab

    vocab = read_vocab(Path(bundle) / VOCAB).words
    ids = np.random.default_rng(seed).integers(0, len(vocab), n)
    words = [vocab[i] for i in ids]
    directory.mkdir(parents=True, exist_ok=True)
    step = -(-n // files)
    for f, start in enumerate(range(0, n, step)):
        pq.write_table(pa.table({"word": pa.array(words[start:start + step], pa.string())}),
                       directory / f"part-{f:04d}.parquet")
    return words


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and every process under it (a local cluster's daemons, workers
    and JVM are), the ones that ended and were waited for included."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:4])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:4])
        except psutil.Error:
            pass
    return total


def blocks(n: int, workers: int) -> int:
    """Blocks (partitions) of a job's words: several per worker, of at most 16,384 words."""
    return max(4 * workers, -(-n // 16384))


def run_ray(args, fleet: bool = False) -> dict:
    t0 = time.perf_counter()
    import ray
    import ray.data

    from dualvec.distributed import ray_data

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             object_store_memory=args.object_store_mb << 20)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ray.data.range(10, override_num_blocks=2).map_batches(lambda b: b).count()
    started = time.perf_counter() - t0
    t1, c1 = time.perf_counter(), tree_cpu_seconds()
    # small files are read into few blocks, and a block goes to one worker: ask for enough of them
    words = ray.data.read_parquet(str(args.queries), override_num_blocks=blocks(args.n, args.workers))
    if fleet:
        rows = ray_data.fleet_neighbors(words, args.address, [args.pair], args.k, workers=args.workers,
                                        batch_size=min(args.batch, 1024))
    else:
        rows = ray_data.bundle_neighbors(words, args.bundle, [args.pair], args.k, workers=args.workers,
                                         batch_size=args.batch)
    rows.write_parquet(str(args.output))
    job, cpu = time.perf_counter() - t1, tree_cpu_seconds() - c1
    ray.shutdown()
    return {"start_seconds": started, "job_seconds": job, "cpu_seconds": cpu}


def run_fleet(args) -> dict:
    return run_ray(args, fleet=True)


def run_spark(args) -> dict:
    t0 = time.perf_counter()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from dualvec.distributed import BundleNeighbors
    from dualvec.distributed.batches import OUTPUT_SCHEMA

    spark = (SparkSession.builder.master(f"local[{args.workers}]").config("spark.ui.enabled", "false")
             .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.batch))
             .config("spark.driver.memory", "2g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    spark.range(10, numPartitions=2).mapInArrow(lambda it: it, "id long").count()
    started = time.perf_counter() - t0
    t1, c1 = time.perf_counter(), tree_cpu_seconds()
    search = BundleNeighbors(args.bundle, [args.pair], args.k, batch=args.batch)

    def transform(batches):
        import pyarrow as pa

        for batch in batches:
            yield from search(pa.Table.from_batches([batch])).to_batches()

    schema = ", ".join(f"{f.name} {'short' if f.name == 'rank' else 'float' if f.name == 'cosine' else 'string'}"
                       for f in OUTPUT_SCHEMA)
    spark.read.parquet(str(args.queries)).repartition(blocks(args.n, args.workers)).mapInArrow(transform, schema).write.parquet(str(args.output))
    job, cpu = time.perf_counter() - t1, tree_cpu_seconds() - c1
    spark.stop()
    return {"start_seconds": started, "job_seconds": job, "cpu_seconds": cpu}


def run_neighbors(args) -> dict:
    from dualvec.cli.main import main

    words = args.output.with_suffix(".words.txt")
    import pyarrow.parquet as pq

    with open(words, "w", encoding="utf-8") as fh:
        for part in sorted(Path(args.queries).glob("*.parquet")):
            fh.writelines(w + "\n" for w in pq.read_table(part).column("word").to_pylist())
    t1, c1 = time.perf_counter(), tree_cpu_seconds()
    code = main(["neighbors", args.bundle, "--pair", args.pair, "-k", str(args.k), "--words", str(words),
                 "-o", str(args.output) + ".parquet", "--threads", str(args.workers), "--batch", str(args.batch),
                 "--skip-checksums", "-q"])
    job, cpu = time.perf_counter() - t1, tree_cpu_seconds() - c1
    if code:
        raise SystemExit(code)
    return {"start_seconds": 0.0, "job_seconds": job, "cpu_seconds": cpu}


def count_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.parquet") if p.is_file())
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def one(args) -> int:
    """Run one engine with one worker count in this process and print its JSON line."""
    result = {"ray": run_ray, "spark": run_spark, "neighbors": run_neighbors, "fleet": run_fleet}[args.one](args)
    out = Path(str(args.output) + ".parquet") if args.one == "neighbors" else Path(args.output)
    rows = count_rows(out)
    result.update(engine=args.one, workers=args.workers, queries=args.n, rows=rows,
                  queries_per_second=args.n / result["job_seconds"], load_average=os.getloadavg()[0])
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--queries", type=int, default=1_000_000, dest="n", help="query words (1,000,000)")
    p.add_argument("--pair", default="in-out")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--engines", default="ray,spark,neighbors", help=f"comma-separated, of {', '.join(ENGINES)}")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (1,2)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (2)")
    p.add_argument("--batch", type=int, default=2048, help="words per batch (2,048)")
    p.add_argument("--object-store-mb", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--address", help="the servers' gRPC target, for the fleet engine")
    p.add_argument("--json", help="write every run's result to this file")
    p.add_argument("--one", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        args.queries = Path(args.dir) / "queries"
        args.output = Path(args.dir) / f"out-{args.one}-{args.workers}"
        args.workers = int(args.workers)
        return one(args)
    work = Path(tempfile.mkdtemp(prefix="dualvec-distributed-"))
    results = []
    try:
        make_queries(args.bundle, args.n, work / "queries", seed=args.seed)
        for _ in range(args.repeat):
            for engine in args.engines.split(","):
                for w in args.workers.split(","):
                    cmd = [sys.executable, "-m", "dualvec.bench.distributed", args.bundle, "--one", engine,
                           "--dir", str(work), "--workers", w, "--queries", str(args.n), "--pair", args.pair,
                           "-k", str(args.k), "--cpus", str(args.cpus), "--batch", str(args.batch),
                           "--object-store-mb", str(args.object_store_mb)]
                    if args.address:
                        cmd += ["--address", args.address]
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
                    if proc.returncode or not lines:
                        print(f"{engine} x{w} failed ({proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
                        continue
                    r = json.loads(lines[-1])
                    results.append(r)
                    print(f"{engine:10} workers {r['workers']}: start {r['start_seconds']:6.1f} s  job "
                          f"{r['job_seconds']:7.1f} s  {r['queries_per_second']:9,.0f} queries/s  "
                          f"{r['rows']:,} rows  {1e6 * r.get('cpu_seconds', 0) / r['queries']:5.0f} us CPU/query  "
                          f"load {r['load_average']:.1f}", flush=True)
                    for out in work.glob("out-*"):
                        shutil.rmtree(out) if out.is_dir() else out.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
