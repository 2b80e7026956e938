"""The gRPC server: app (building, starting and supervising the server), servicer (a thin adapter from protobuf
messages to dualvec.kernel and from domain errors to status codes), status_codes (that one table), admission and
batching (how concurrent calls share the CPUs), and host/ (CPU pinning, worker processes, huge pages,
prefaulting)."""
