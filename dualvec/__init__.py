"""dualvec: serve both embedding spaces (IN and OUT) of a word2vec model.

Import map (see README.md, "Layout"):
    dualvec.kernel.bundle      the bundle format: the one reader and writer
    dualvec.kernel.ann         index kinds and how a space is searched with tuned parameters
    dualvec.indexer     reading models, normalizing, building and tuning indexes
    dualvec.server      the search core, DESM, and the gRPC servicer
    dualvec.client      a typed Python client (``dualvec.Client``)
    dualvec.v1          generated protobuf / gRPC code
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "Client"]


def __getattr__(name: str):
    # The client pulls in grpc; import it only when asked for.
    if name == "Client":
        from dualvec.client import Client

        return Client
    raise AttributeError(name)
