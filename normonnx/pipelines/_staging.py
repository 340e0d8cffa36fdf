"""Write a rewritten model only if it computes what its source does: stage, verify from disk, commit.

``fold`` and ``emit`` (and their many-file forms) end the same way: the
model is staged beside its destination, run against the source from disk
(in isolated processes unless the caller is itself an isolated worker), and
renamed into place only if parity holds. Nothing is written otherwise.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx

from normonnx.errors import MissingKernelError
from normonnx.graph.modelio import save_model, staged_save
from normonnx.reports.progress import phase
from normonnx.results import Bisection, ParityResult
from normonnx.validate.bisect import bisect
from normonnx.validate.verify import OriginalRun, verify_parity

log = logging.getLogger(__name__)


def write_verified(
    model: onnx.ModelProto,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    verify: bool,
    shapes: dict[str, tuple[int, ...]] | None,
    isolated: bool,
    reference_proto: onnx.ModelProto | None = None,
    reference: onnx.ModelProto | None = None,
    original: OriginalRun | None = None,
    source_verdict: Callable[[], None] | None = None,
) -> tuple[ParityResult | None, str | None, list[str]]:
    """(parity or None when not verified, the output written or None, weight files the replaced output left).

    ``reference`` replaces ``src`` as what the output is verified against (a pre-opset-7 file's runnable copy).
    ``original``: the proof's original half, started while the output was being made (``start_original_run``).
    ``source_verdict``: onnx's checker on ``src``, still to be heard (``load_checked_meanwhile``); it is heard
    before the proof's outcome and before anything is committed.
    """
    output = None
    phase("stage the output")
    with staged_save(model, dst, inputs=[src], no_stricter_than=src) as staged:
        parity = None
        if verify:
            log.info("%s: verifying parity against the original", src)
            try:
                parity = verify_parity(
                    src if reference is None else reference,
                    staged.path,
                    shapes=shapes,
                    reference_proto=reference_proto if reference is None else reference,
                    candidate_bytes=staged.disk_bytes(),
                    isolated=isolated,
                    original=original,
                    beside=staged.check,
                )
            except MissingKernelError as e:  # the rewrite is fine; the proof needs the op's library
                raise MissingKernelError(f"{e}, or --no-verify to write it without the proof") from None
        staged.check()  # onnx's checker, if the proof did not run it beside its last run
        if source_verdict is not None:
            source_verdict()
        if parity is None or parity.passed:
            phase("write")
            staged.commit()
            output = str(dst)
    return parity, output, staged.stale


def bisect_rewrites(
    kind: str,
    rewrites: Sequence[str],
    build: Callable[[frozenset[str]], onnx.ModelProto],
    reference: str | os.PathLike | onnx.ModelProto,
    *,
    shapes: dict[str, tuple[int, ...]] | None,
    isolated: bool,
) -> Bisection:
    """The one of ``rewrites`` (the full result failed parity) without which the result passes:
    ``build(undone)`` makes the model with those left undone; each is verified from disk."""
    with tempfile.TemporaryDirectory(prefix="normonnx-bisect-") as tmp:
        path = Path(tmp) / "candidate.onnx"

        def fails(applied: frozenset[str]) -> bool:
            save_model(build(frozenset(rewrites) - applied), path)
            return not verify_parity(reference, path, shapes=shapes, isolated=isolated).passed

        log.info("the output failed parity; bisecting its %d %s", len(rewrites), kind)
        return bisect(kind, rewrites, fails)


def deliver_without_the_rewrite_at_fault(
    kind: str,
    failed: Any,
    build: Callable[[frozenset[str]], tuple[onnx.ModelProto, Any]],
    kept: Callable[[str, Any], str],
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    shapes: dict[str, tuple[int, ...]] | None,
    isolated: bool,
    reference: onnx.ModelProto | None,
    reference_proto: onnx.ModelProto | None = None,
) -> Any:
    """``failed`` (a fold or emit report whose output failed parity) bisected over its rewrites (every
    decision that rewrote, by its anchor node); the report of the output rebuilt with the one at fault undone
    and written if it passes, its note saying ``kept(culprit, report)`` and the error; ``failed`` itself,
    noted, when no single rewrite is to blame."""
    rewrites = list(dict.fromkeys(d.node for d in failed.decisions if d.folded))
    worst = failed.parity.worst()
    found = bisect_rewrites(
        kind, rewrites, lambda undone: build(undone)[0], src if reference is None else reference,
        shapes=shapes, isolated=isolated,
    )  # fmt: skip
    failed.bisection = found
    if found.culprit is None:
        failed.notes.append(f"bisecting the {len(rewrites)} rewrites blamed none: {found.note}")
        return failed
    model, report = build(frozenset([found.culprit]))
    report.bisection = found
    report.parity, report.output, stale = write_verified(
        model, src, dst, verify=True, shapes=shapes, isolated=isolated, reference_proto=reference_proto,
        reference=reference,
    )  # fmt: skip
    if hasattr(report, "stale_files"):
        report.stale_files = stale
    err = f", max|diff| {worst.max_abs:.3g} on {worst.name}" if worst is not None else ""
    report.notes.append(
        f"{kept(found.culprit, report)}{err} (found by bisection over {len(rewrites)} rewrites in {found.runs} runs)"
    )
    return report
