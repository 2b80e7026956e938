"""Generated protobuf and gRPC code for dualvec/v1/dualvec.proto (regenerate with scripts/gen_proto.py)."""
