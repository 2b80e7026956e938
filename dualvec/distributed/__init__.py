"""Neighbour tables bigger than one machine, on a distributed engine (docs/large-scale.md, "Beyond one machine").

dualvec.distributed.batches holds the engine-free batch transforms (BundleNeighbors searches a bundle in the
worker's process, FleetNeighbors asks running servers); dualvec.distributed.ray_data runs them on Ray Data
(``pip install "dualvec[ray]"``).
"""
from dualvec.distributed.batches import OUTPUT_SCHEMA, BundleNeighbors, FleetNeighbors, open_bundle

__all__ = ["OUTPUT_SCHEMA", "BundleNeighbors", "FleetNeighbors", "open_bundle"]
