"""Regenerate the checked-in Python stubs from protos/recsys/v1/*.proto.

python protos/generate.py            # writes next to the .proto files
python protos/generate.py --out DIR  # writes elsewhere (the freshness test compares the two)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted(PROTO_ROOT.glob("recsys/v1/*.proto"))


def generate(out: Path) -> list[Path]:
    """Run protoc (messages, gRPC stubs, and mypy-protobuf .pyi for both) into `out`; returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    grpc_include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{grpc_include}",
        f"--plugin=protoc-gen-mypy={shutil.which('protoc-gen-mypy') or bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={shutil.which('protoc-gen-mypy_grpc') or bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out={out}",
        *[str(p) for p in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + " ".join(p.name for p in PROTO_FILES))
    return sorted((out / "recsys" / "v1").glob("*_pb2*.py*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT)
    for path in generate(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
