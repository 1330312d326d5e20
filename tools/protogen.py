"""Generate the Python gRPC code for ``proto/`` into ``shared/wire/_pb`` (the one command for it).

Run ``python -m fpnlink.tools.protogen``; ``tests/shared/test_wire.py`` fails when the committed code is stale.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "proto"
PROTO_FILES = ("fpnlink/v1/fpnlink.proto",)
OUTPUT_DIR = REPO / "shared" / "wire" / "_pb"


def generate(out_dir: Path = OUTPUT_DIR) -> list[Path]:
    """Run protoc (grpcio-tools) and rewrite the generated absolute import into a package-relative one."""
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *PROTO_FILES]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        for generated in sorted(Path(tmp).rglob("*_pb2*.py*")):
            text = re.sub(r"^from fpnlink\.v1 import (\w+)", r"from . import \1", generated.read_text(), flags=re.M)
            target = out_dir / generated.name
            target.write_text(text)
            written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUTPUT_DIR)
    for path in generate(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
