"""dualvec.distributed on a local Ray cluster of 2 CPUs: the table a pool of workers computes from a dataset of
words is the table `dualvec neighbors` writes for the same words (same words, ranks and neighbours, cosines within
1e-6), searched on the bundle in each worker or asked of a running server; and the batch transforms themselves,
without an engine."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dualvec.cli.main import main
from dualvec.distributed import OUTPUT_SCHEMA, BundleNeighbors, FleetNeighbors, open_bundle
from dualvec.kernel.bundle import VOCAB, read_vocab
from dualvec.kernel.errors import InvalidArgument, UnknownWords

FIXTURES = Path(__file__).parent / "fixtures" / "bundle_v1"
PAIRS = ("in-in", "in-out", "out-in", "out-out")
# Ray Data's own settings warn of their deprecated names when a cluster starts
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

if os.environ.get("CI"):
    import ray  # CI installs the extra (".[test,ray]"): a missing engine fails here instead of skipping
else:
    ray = pytest.importorskip("ray", reason='Ray Data is not installed: pip install -e ".[test,ray]"')


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for this module."""
    import ray.data

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             object_store_memory=200 << 20)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def words_of(bundle: Path) -> list[str]:
    return read_vocab(Path(bundle) / VOCAB).words


def command_table(bundle: Path, out: Path, pairs=PAIRS, k: int = 10, words: list[str] | None = None,
                  extra: tuple[str, ...] = ()) -> pa.Table:
    """What `dualvec neighbors` writes for these words (--all when None)."""
    argv = ["neighbors", str(bundle), *[a for p in pairs for a in ("--pair", p)], "-k", str(k), "-o", str(out),
            "-q", *extra]
    if words is None:
        argv.append("--all")
    else:
        listing = out.with_suffix(".words.txt")
        listing.write_text("".join(w + "\n" for w in words), encoding="utf-8")
        argv += ["--words", str(listing)]
    assert main(argv) == 0
    return pq.read_table(out)


def rows(table: pa.Table) -> list[tuple]:
    """(pair, word, rank, neighbor, cosine) rows, sorted (engines do not keep the order of blocks)."""
    return sorted(zip(*(table.column(c).to_pylist() for c in OUTPUT_SCHEMA.names)))


def assert_same_table(got: pa.Table, want: pa.Table) -> None:
    assert got.schema.equals(OUTPUT_SCHEMA)
    got_rows, want_rows = rows(got), rows(want)
    assert len(got_rows) == len(want_rows)
    assert [r[:4] for r in got_rows] == [r[:4] for r in want_rows]  # words, ranks, neighbours
    np.testing.assert_allclose([r[4] for r in got_rows], [r[4] for r in want_rows], rtol=0, atol=1e-6)


def collect(ds) -> pa.Table:
    tables = ray.get(ds.to_arrow_refs())
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables).cast(OUTPUT_SCHEMA) if tables else OUTPUT_SCHEMA.empty_table()


def words_dataset(words: list[str], blocks: int = 4):
    from dualvec.distributed.ray_data import words_dataset

    return words_dataset(words, blocks=blocks)


# ------------------------------------------------------------------------------------------ on a Ray cluster
# Starting a cluster takes 10-30 s here: these are slow (.ci/run covers them, the fast loop does not).

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_workers_write_the_table_of_the_command(cluster, tmp_path, kind):
    bundle = FIXTURES / kind
    from dualvec.distributed import ray_data

    want = command_table(bundle, tmp_path / "nb.parquet")
    ds = ray_data.bundle_neighbors(ray_data.vocabulary(bundle, blocks=4), bundle, "all", 10, workers=2,
                                   batch_size=8)
    assert_same_table(collect(ds), want)


@pytest.mark.slow
def test_workers_on_a_real_model_bundle(cluster, tmp_path, lee_ivf_bundle):
    """Every word of a 4k-word IVF bundle tuned to recall .95, in two pairs, hub rows merged: the command's
    table, to the row."""
    from dualvec.distributed import ray_data

    pairs = ("in-out", "out-in")
    want = command_table(lee_ivf_bundle, tmp_path / "nb.parquet", pairs=pairs)
    ds = ray_data.bundle_neighbors(ray_data.vocabulary(lee_ivf_bundle, blocks=6), lee_ivf_bundle, pairs, 10,
                                   workers=2, batch_size=512)
    assert_same_table(collect(ds), want)


@pytest.mark.slow
def test_repeated_and_unknown_words(cluster, tmp_path):
    bundle = FIXTURES / "hnsw"
    from dualvec.distributed import ray_data

    vocab = words_of(bundle)
    rng = np.random.default_rng(5)
    words = [vocab[i] for i in rng.integers(0, len(vocab), 300)]  # with replacement, as a query log has them
    want = command_table(bundle, tmp_path / "nb.parquet", pairs=("in-out",), k=5, words=words)
    ds = ray_data.bundle_neighbors(words_dataset(words), bundle, ["in-out"], 5, workers=2, batch_size=32)
    assert_same_table(collect(ds), want)

    with_unknown = words[:50] + ["no-such-word-here"] + words[50:]
    ds = ray_data.bundle_neighbors(words_dataset(with_unknown), bundle, ["in-out"], 5, workers=2,
                                   skip_unknown=True)
    assert_same_table(collect(ds), want)
    ds = ray_data.bundle_neighbors(words_dataset(with_unknown), bundle, ["in-out"], 5, workers=2)
    with pytest.raises(Exception, match="no-such-word-here"):
        collect(ds)


@pytest.mark.slow
def test_a_fleet_of_servers_answers_the_same(cluster, tmp_path, lee_bundle, lee_server):
    from dualvec.distributed import ray_data

    words = words_of(lee_bundle)[:1500]
    pairs = ("in-out", "out-in")
    want = command_table(lee_bundle, tmp_path / "nb.parquet", pairs=pairs, words=words)
    ds = ray_data.fleet_neighbors(words_dataset(words, blocks=3), lee_server.address, pairs, 10, workers=2,
                                  batch_size=256)
    assert_same_table(collect(ds), want)


@pytest.mark.slow
def test_the_job_is_checked_before_any_worker_starts(cluster):
    from dualvec.distributed import ray_data

    ds = words_dataset(["the"], blocks=1)
    with pytest.raises(InvalidArgument, match="pairs"):
        ray_data.bundle_neighbors(ds, FIXTURES / "hnsw", ["in-up"], 10)
    with pytest.raises(InvalidArgument, match="k: must be between 1 and 1000"):
        ray_data.bundle_neighbors(ds, FIXTURES / "hnsw", ["in-out"], 0)
    with pytest.raises(Exception, match="does not exist"):
        ray_data.bundle_neighbors(ds, FIXTURES / "nowhere", ["in-out"], 10)


@pytest.mark.slow
def test_the_pool_leaves_a_cpu_for_reading_and_writing(cluster):
    """Ray Data's file listing, read and write tasks need a CPU beside the pool: a pool of 2 one-thread workers on
    2 CPUs reserves half a CPU each."""
    from dualvec.distributed.ray_data import _pool

    assert _pool(cluster, None, 1, None) == (1, 1.0)
    assert _pool(cluster, 1, 1, None) == (1, 1.0)
    assert _pool(cluster, 2, 1, None) == (2, 0.5)
    assert _pool(cluster, 2, 1, 0.25) == (2, 0.25)


# ------------------------------------------------------------------------------------ without an engine

def test_a_transform_pickles_without_its_bundle_and_reopens_it_once_per_process():
    bundle = FIXTURES / "ivf"
    search = BundleNeighbors(bundle, ["in-out"], 5)
    state = pickle.dumps(search)
    assert len(state) < 2000  # the bundle is not in it
    copy = pickle.loads(state)
    table = copy(pa.table({"word": ["the", "said"]}))
    assert copy._bundle is search._bundle is open_bundle(bundle)  # one bundle per process
    assert table.column("word").to_pylist() == ["the"] * 5 + ["said"] * 5
    assert table.column("rank").to_pylist() == [1, 2, 3, 4, 5] * 2


def test_unknown_words_and_bad_batches_are_named():
    search = BundleNeighbors(FIXTURES / "flat", ["in-in"], 3)
    with pytest.raises(UnknownWords, match="zzzz"):
        search(pa.table({"word": ["the", "zzzz"]}))
    with pytest.raises(InvalidArgument, match="column"):
        search(pa.table({"token": ["the"]}))
    assert search({"word": np.array([], dtype=object)}).num_rows == 0
    assert BundleNeighbors(FIXTURES / "flat", ["in-in"], 3, skip_unknown=True)(
        pa.table({"word": ["zzzz", "the"]})).column("word").to_pylist() == ["the"] * 3


def test_fleet_transform_skips_unknown_words_over_a_stream(tmp_path, lee_bundle, lee_server):
    words = words_of(lee_bundle)[:40]
    want = command_table(lee_bundle, tmp_path / "nb.parquet", pairs=("in-in",), k=4, words=words)
    batch = pa.table({"word": words[:20] + ["not-a-word-at-all"] + words[20:]})
    fleet = FleetNeighbors(lee_server.address, "in-in", 4, per_call=16, skip_unknown=True)
    assert_same_table(pickle.loads(pickle.dumps(fleet))(batch), want)
    from dualvec.client import ClientError

    with pytest.raises(ClientError, match="NOT_FOUND"):
        FleetNeighbors(lee_server.address, "in-in", 4)(batch)
