"""What the corpus generator helpers share: their command line, and how a target gets into place.

A helper is run as `python scripts/corpus/gen_X.py --out CORPUS REL...` (by scripts/fetch_corpus.py, in whichever
venv has its exporter) and writes each `CORPUS/REL`. Exit codes: 0 all written, 1 some failed, 2 bad arguments,
3 the exporter's packages cannot be imported (the caller reports the step as skipped, not failed).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path

Builder = Callable[[Path], None]
TOOLS_MISSING = 3


def seed_for(rel: str) -> int:
    """A stable per-target seed, so a rerun after deleting one file rebuilds the same model."""
    return zlib.crc32(rel.encode()) & 0x7FFFFFFF


def run(builders: dict[str, Builder], argv: list[str] | None = None) -> int:
    """Build each requested target in a scratch folder and move it into place only once it is complete."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("targets", nargs="+", help=f"any of: {', '.join(builders)}")
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in builders]
    if unknown:
        print(f"unknown targets: {unknown}", file=sys.stderr)
        return 2
    failed: list[str] = []
    missing_tools: list[str] = []
    for rel in args.targets:
        final = args.out / rel
        with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
            scratch = Path(tmp) / final.name
            try:
                builders[rel](scratch)
                extra = [p.name for p in Path(tmp).iterdir() if p != scratch]
                if extra:  # an exporter that spilled weights to external data would leave the .onnx incomplete
                    raise RuntimeError(f"exporter wrote more than one file: {extra}")
                final.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(scratch, final)
                print(f"wrote {rel}", flush=True)
            except ImportError as err:
                print(f"tools missing for {rel}: {err}", flush=True)
                missing_tools.append(rel)
            except Exception:
                traceback.print_exc()
                print(f"failed {rel}", flush=True)
                failed.append(rel)
    if missing_tools and len(missing_tools) == len(args.targets):
        return TOOLS_MISSING
    return 1 if failed or missing_tools else 0
