"""What the commands print: reports on stdout, verdicts and errors on stderr with --json.

stdout carries exactly one JSON document with ``--json``; otherwise plain
text. A closed stdout (``normonnx inspect m.onnx | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from normonnx.errors import EXIT_OK, EXIT_VERIFY_FAILED, OutputError


def out(text: str = "") -> None:
    print(text, flush=True)


def verdict(args: argparse.Namespace, text: str) -> None:
    """Closing lines: on stdout, or on stderr with --json so that stdout is exactly one JSON document."""
    print(text, file=sys.stderr if getattr(args, "json", False) else sys.stdout, flush=True)


def show(args: argparse.Namespace, report, render: Callable[[object], str], title: str | None = None) -> None:
    """The report on stdout: exactly one JSON document with --json, else ``title`` and the rendered text."""
    if getattr(args, "json", False):
        out(json.dumps(report.to_dict(), indent=2))
        return
    if title:
        out(title)
    out(render(report))


def write_json(path: str | None, data: dict) -> None:
    """--report REPORT.json, when given."""
    if not path:
        return
    from normonnx.fileio import write_json_atomic

    write_json_atomic(path, data)


def check_report_path(report: str | None, *protected: str | None) -> None:
    """Refuse, before any work, a --report that would land on an input or on the output."""
    if not report:
        return
    target = Path(report).resolve()
    if target.is_dir():
        raise OutputError(f"{report}: --report names a directory; give the JSON file to write")
    for other in protected:
        if other and Path(other).resolve() == target:
            raise OutputError(f"{report}: --report would overwrite {other}")
    if not target.parent.is_dir():
        raise OutputError(f"{report}: folder {target.parent} does not exist")


def finish(args: argparse.Namespace, output: str, report, written: bool, what: str) -> int:
    """The verdict lines shared by the commands that write a model."""
    if not written:
        print(f"normonnx: {output}: not written, the model does not match {what}", file=sys.stderr)
        verdict(args, "FAILED")
        return EXIT_VERIFY_FAILED
    verdict(args, f"wrote {output} in {report.seconds:.2f} s")
    verdict(args, "PASSED" if report.parity is not None else "DONE (parity not verified: --no-verify)")
    return EXIT_OK
