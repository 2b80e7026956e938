#!/usr/bin/env python3
"""Regenerate the Python code for proto/dualvec/v1/dualvec.proto, in place (or into --out).

    python scripts/gen_proto.py            # rewrite proto/dualvec/v1/dualvec_pb2*.py{,i}
    python scripts/gen_proto.py --out DIR  # write into DIR/dualvec/v1 instead (the staleness test does this)

Needs grpcio-tools at the version pinned in pyproject.toml's [test] extra: its output is committed and compared
byte for byte by tests/test_proto_current.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
PROTO_FILE = "dualvec/v1/dualvec.proto"


def generate(out_root: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on the proto; return the files written under out_root."""
    from grpc_tools import protoc
    import grpc_tools

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        PROTO_FILE,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    return sorted((out_root / "dualvec" / "v1").glob("dualvec_pb2*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="root to write dualvec/v1/ under")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
