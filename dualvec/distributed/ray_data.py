"""The neighbour table on Ray Data: a dataset of query words in, a dataset of neighbour rows out.

    import ray
    from dualvec.distributed import ray_data

    ray.init()                                               # or address="auto" on a cluster
    words = ray.data.read_parquet("s3://bucket/queries/")    # any dataset with a column "word"
    rows = ray_data.bundle_neighbors(words, "/data/m1m.bundle", pairs=["in-out"], k=10, workers=8)
    rows.write_parquet("s3://bucket/neighbours/")

bundle_neighbors maps the batches through a fixed pool of ``workers`` actors, each holding BundleNeighbors: the
bundle is opened once per actor (its vectors memory-mapped, so the actors of one node share them in the page
cache) and each batch is searched there as `dualvec neighbors` searches it. fleet_neighbors sends the batches to running servers
through dualvec.Client instead (FleetNeighbors). Output columns: dualvec.distributed.OUTPUT_SCHEMA.

Needs the extra: ``pip install "dualvec[ray]"``, on the driver and on every node.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

from dualvec.distributed.batches import DEFAULT_COLUMN, BundleNeighbors, FleetNeighbors, check_k, check_pairs


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise ImportError('dualvec.distributed.ray_data needs Ray Data: pip install "dualvec[ray]"') from None
    return ray


def _pool(ray, workers: int | None, threads: int, num_cpus: float | None) -> tuple[int, float]:
    """(actors, CPUs each reserves). Ray Data's file listing, read and write tasks each need a CPU of the
    cluster's accounting beside the pool: a pool that would hold every CPU makes them wait for ever. So the default
    pool leaves one CPU, and a pool given that would not (``workers`` x ``threads`` above the cluster's CPUs less
    one) reserves (CPUs - 1) / workers each, while every worker still runs ``threads`` FAISS threads."""
    cpus = ray.cluster_resources().get("CPU", 1.0) if ray.is_initialized() else float(os.cpu_count() or 1)
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if num_cpus is not None:
        if num_cpus <= 0:
            raise ValueError(f"num_cpus must be above 0, got {num_cpus}")
        return (workers or max(1, int((cpus - 1) // num_cpus))), float(num_cpus)
    size = workers if workers is not None else max(1, int((cpus - 1) // threads))
    if size * threads <= cpus - 1:
        return size, float(threads)
    return size, max(0.05, math.floor(20 * (cpus - 1) / size) / 20)


def bundle_neighbors(ds, bundle: str | os.PathLike, pairs: Sequence[str] | str = ("in-out",), k: int = 10, *,
                     column: str = DEFAULT_COLUMN, workers: int | None = None, threads: int = 1,
                     num_cpus: float | None = None, batch_size: int = 2048, exact: bool = False,
                     skip_unknown: bool = False, checksums: bool = False):
    """A Ray dataset of the top-k neighbours of the words in ``ds``'s column ``column`` in each pair, searched
    locally on ``bundle`` by a pool of ``workers`` actors, each running ``threads`` FAISS threads (default: as
    many actors as the cluster's CPUs less one hold). num_cpus: CPUs each actor reserves in Ray's accounting
    (default ``threads``, lowered when the pool would hold every CPU: see _pool). batch_size: words per batch (one
    FAISS call per pair). The bundle's path must be the same on every node. The job is checked against the
    bundle's manifest here (pairs, k), before any worker starts; a worker that meets an unknown word fails the job
    with UnknownWords naming it, unless skip_unknown."""
    ray = _ray()
    from dualvec.kernel.bundle import read_manifest

    manifest = read_manifest(bundle)
    pairs = check_pairs(manifest.spaces, pairs)
    k = check_k(k)
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    size, reserve = _pool(ray, workers, threads, num_cpus)
    return ds.map_batches(
        BundleNeighbors,
        fn_constructor_kwargs=dict(bundle=os.fspath(bundle), pairs=pairs, k=k, column=column, exact=exact,
                                   threads=int(threads), batch=batch_size, skip_unknown=skip_unknown,
                                   checksums=checksums),
        batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=reserve)


def fleet_neighbors(ds, address: str, pairs: Sequence[str] | str = ("in-out",), k: int = 10, *,
                    column: str = DEFAULT_COLUMN, workers: int = 2, batch_size: int = 1024,
                    skip_unknown: bool = False, **client_options):
    """A Ray dataset of the top-k neighbours of the words in ``ds``'s column ``column`` in each pair, asked of
    the servers at ``address`` by a pool of ``workers`` actors, one BatchSearch per batch of ``batch_size`` words
    and pair (FleetNeighbors; client_options: dualvec.Client's keyword arguments). The actors wait on the network
    mostly, so each reserves half a CPU."""
    ray = _ray()
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    fleet = FleetNeighbors(address, pairs, k, column=column, per_call=batch_size, skip_unknown=skip_unknown,
                           **client_options)
    return ds.map_batches(
        FleetNeighbors,
        fn_constructor_args=(fleet.address, fleet.pairs, fleet.k),
        fn_constructor_kwargs=dict(column=column, per_call=fleet.per_call, skip_unknown=skip_unknown,
                                   **client_options),
        batch_size=fleet.per_call, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=int(workers)),
        num_cpus=0.5)


def words_dataset(words: Sequence[str], *, column: str = DEFAULT_COLUMN, blocks: int | None = None):
    """A Ray dataset of query words, in order, in ``blocks`` blocks (default: one per 16,384 words, at least 8).
    A block goes to one worker, so a job needs at least as many blocks as workers; reading many small files
    into few blocks is Ray's habit (``read_parquet(..., override_num_blocks=N)`` asks for more)."""
    ray = _ray()
    import pyarrow as pa

    n = len(words)
    blocks = max(1, min(n, blocks or max(8, -(-n // 16384))))
    step = -(-n // blocks) if n else 1
    return ray.data.from_arrow([pa.table({column: pa.array(list(words[i:i + step]), pa.string())})
                                for i in range(0, max(n, 1), step)])


def vocabulary(bundle: str | os.PathLike, *, column: str = DEFAULT_COLUMN, blocks: int | None = None):
    """A Ray dataset of every word of a bundle's vocabulary, in order (`dualvec neighbors --all`'s words)."""
    from pathlib import Path

    from dualvec.kernel.bundle import VOCAB, read_manifest, read_vocab

    read_manifest(bundle)
    return words_dataset(read_vocab(Path(bundle) / VOCAB).words, column=column, blocks=blocks)
