"""dualvec: serve both embedding spaces (IN and OUT) of a word2vec model.

Import map (see docs/architecture.md):
    dualvec.kernel      what indexer and server share: bundle format, index kinds, search engine, DESM, truth
    dualvec.indexer     reading models, normalizing, building and tuning indexes, writing bundles
    dualvec.server      the gRPC server: a thin servicer over dualvec.kernel, admission, batching, host tuning
    dualvec.client      a typed Python client (``dualvec.Client``)
    dualvec.wire        the one mapping between kernel types and protobuf messages
    dualvec.cli         the `dualvec` command
    dualvec.loadtest    the load tester; dualvec.bench: the benchmark's library
    dualvec.v1          generated protobuf / gRPC code
"""
from __future__ import annotations

__version__ = "0.1.0"


def _source_checkout_path() -> None:
    """In a source checkout, ``python -m`` puts the repository root first on sys.path, so this folder is imported
    instead of the installed package; the subpackages that pyproject.toml maps from other top-level folders
    (indexer/, server/, proto/dualvec/v1/) are then found here too, as they are when installed."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isdir(os.path.join(root, "indexer")):
        __path__.extend([root, os.path.join(root, "proto", "dualvec")])


_source_checkout_path()

__all__ = ["__version__", "Client"]


def __getattr__(name: str):
    # The client pulls in grpc; import it only when asked for.
    if name == "Client":
        from dualvec.client import Client

        return Client
    raise AttributeError(name)
