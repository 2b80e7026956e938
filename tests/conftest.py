"""Shared fixtures: small real models trained here on text that ships inside gensim's wheel, and bundles of them.

Everything is session-scoped and built once per test run under a temporary directory."""
from __future__ import annotations

from pathlib import Path

import gensim
import pytest

from dualvec.indexer.build import BuildConfig, build_bundle
from dualvec.indexer.model_readers import read_model
from dualvec.indexer.training import TrainConfig, train
from dualvec.indexer.tuning import TuningConfig

GENSIM_DATA = Path(gensim.__file__).parent / "test" / "test_data"
LEE_CORPUS = GENSIM_DATA / "lee_background.cor"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dualvec")


@pytest.fixture(scope="session")
def lee_model(workdir) -> Path:
    """A real negative-sampling Word2Vec model (about 4k words x 48 dims) of the Lee news corpus."""
    path = workdir / "lee.model"
    train(LEE_CORPUS, path, TrainConfig(dim=48, min_count=2, epochs=8, workers=2, seed=3, quiet=True))
    return path


@pytest.fixture(scope="session")
def lee_bundle(workdir, lee_model) -> Path:
    """Exact (flat) bundle of lee_model."""
    path = workdir / "lee.bundle"
    build_bundle(read_model(lee_model), path, BuildConfig(index="flat", quiet=True))
    return path


@pytest.fixture(scope="session")
def lee_ivf_bundle(workdir, lee_model) -> Path:
    """IVF bundle of lee_model, every pair tuned to recall@10 >= 0.95."""
    path = workdir / "lee-ivf.bundle"
    cfg = BuildConfig(index="ivf", quiet=True,
                      tuning=TuningConfig(target_recall=0.95, tune_queries=300, eval_queries=500, hub_queries=1000))
    build_bundle(read_model(lee_model), path, cfg)
    return path


@pytest.fixture(scope="module")
def lee_server(lee_bundle):
    """A running in-process gRPC server of lee_bundle on a free port (one per test module)."""
    from dualvec.server.app import ServerConfig, load_engines, start_server

    cfg = ServerConfig(bundles=(str(lee_bundle),), port=0, checksums=False)
    running = start_server(load_engines(cfg), cfg)
    yield running
    running.stop(1.0)
