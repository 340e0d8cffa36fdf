"""The one parity function of the project.

An output passes when ``max|cand - ref| <= max(atol, rtol * max|ref|)`` over
every sample, its shape matches, and no NaN/Inf appears where the reference
has none (or vice versa). With the fp32 default (atol = rtol = 1e-5) that is
``max|diff| <= 1e-5 * max(1, max|ref|)``: tight enough to catch a 1% error in
one weight, loose enough for the reassociation a correct fold causes.
Integer and boolean outputs must match exactly.

Deep networks without skip connections can be chaotic in float32: two correct
evaluation orders of the same model differ by O(1). For such a model the
gate is re-judged against its *noise floor*, the difference onnxruntime's own
graph optimizer makes to the reference on the same inputs: a candidate no
further from the reference than twice that passes, marked ``judged_by:
"noise floor"`` so that nobody mistakes it for a tight pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from normonnx.results import OutputResult, ParityResult


@dataclass(frozen=True)
class Gate:
    """``max|diff| <= max(atol, rtol * max|ref|)``; or, with ``min_sqnr`` (an int8 model, whose every value
    is off by up to half a quantization step), a signal-to-quantization-noise ratio of at least that many dB."""

    atol: float = 1e-5
    rtol: float = 1e-5
    min_sqnr: float | None = None

    def threshold(self, ref_max: float) -> float | None:
        """The largest max|diff| that passes (None: the gate is on SQNR)."""
        return None if self.min_sqnr is not None else max(self.atol, self.rtol * ref_max)


FP32_GATE = Gate(1e-5, 1e-5)
# A half-precision candidate judged in half-faithful arithmetic against the float32 model (DESIGN.md 5).
FAITHFUL_GATE = Gate(1e-2, 1e-2)
# fp16 candidates are judged against an fp32 reference: normalized max error 5e-3.
FP16_GATE = Gate(5e-3, 5e-3)
# An int8 candidate against its float32 model: SQNR = 10 log10(sum ref^2 / sum (ref - cand)^2) >= 20 dB, an rms
# error of at most a tenth of the signal's rms (DESIGN.md section 5).
INT8_MIN_SQNR = 20.0
INT8_GATE = Gate(min_sqnr=INT8_MIN_SQNR)


MAX_SQNR = 300.0  # dB: what an exact candidate scores (float64 cannot measure more), finite for JSON


def sqnr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB, at most MAX_SQNR (an exact candidate); a zero signal with
    noise scores -MAX_SQNR."""
    ref, cand = np.asarray(ref, dtype=np.float64), np.asarray(cand, dtype=np.float64)
    noise = float(np.sum((ref - cand) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return MAX_SQNR
    if signal == 0.0:
        return -MAX_SQNR
    return float(np.clip(10 * np.log10(signal / noise), -MAX_SQNR, MAX_SQNR))


def default_gate(dtype: np.dtype) -> Gate:
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return Gate(0.0, 0.0)
    return FP16_GATE if dtype.itemsize <= 2 else FP32_GATE


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare_output(
    name: str, refs: list[np.ndarray], cands: list[np.ndarray], gate: Gate | None = None
) -> OutputResult:
    """Compare one output over all samples."""
    shape = list(np.shape(refs[0]))
    dtype = np.asarray(cands[0]).dtype
    gate = gate or default_gate(dtype)
    if gate.min_sqnr is not None and dtype.kind != "f":
        gate = default_gate(dtype)  # an index or a count is right or wrong: SQNR would average a flip away
    for r, c in zip(refs, cands, strict=False):
        if np.shape(r) != np.shape(c):
            return OutputResult(
                name,
                shape,
                str(dtype),
                np.inf,
                np.inf,
                0.0,
                np.inf,
                0.0,
                0.0,
                0,
                False,
                f"shape {list(np.shape(c))} != reference {list(np.shape(r))}",
            )
    ref = np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1) for r in refs])
    cand = np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1) for c in cands])
    ref_finite, cand_finite = np.isfinite(ref), np.isfinite(cand)
    same_special = (~ref_finite) & (~cand_finite) & ((ref == cand) | (np.isnan(ref) & np.isnan(cand)))
    mismatch = int(np.count_nonzero((ref_finite != cand_finite) | ((~ref_finite) & ~same_special)))
    both = ref_finite & cand_finite
    diff = np.abs(ref[both] - cand[both])
    ref_max = float(np.max(np.abs(ref[both]))) if both.any() else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    threshold = gate.threshold(ref_max)
    # Only where it is the gate: float32 and half reports stay as they were.
    sqnr = sqnr_db(ref[both], cand[both]) if gate.min_sqnr is not None and both.any() else None
    reasons = []
    if mismatch:
        reasons.append(f"{mismatch} NaN/Inf values where the reference differs")
    if threshold is not None and max_abs > threshold:
        reasons.append(f"max|diff| {max_abs:.3g} > {threshold:.3g}")
    if gate.min_sqnr is not None and (sqnr is None or sqnr < gate.min_sqnr):
        reasons.append(f"SQNR {sqnr:.1f} dB < {gate.min_sqnr:g} dB" if sqnr is not None else "no finite values")
    return OutputResult(
        name=name,
        shape=shape,
        dtype=str(dtype),
        max_abs=max_abs,
        max_rel=max_abs / max(ref_max, 1e-12),
        cosine=_cosine(ref[both], cand[both]),
        p99_abs=float(np.percentile(diff, 99)) if diff.size else 0.0,
        ref_max=ref_max,
        threshold=threshold,
        nonfinite_mismatch=mismatch,
        passed=not reasons,
        reason="; ".join(reasons),
        sqnr_db=sqnr,
        min_sqnr_db=gate.min_sqnr,
    )


def compare(
    refs: list[dict[str, np.ndarray]],
    cands: list[dict[str, np.ndarray]],
    gates: dict[str, Gate] | None = None,
    default: Gate | None = None,
) -> ParityResult:
    """Compare every output the reference produced, over all samples."""
    result = ParityResult(samples=len(refs))
    gates = gates or {}
    for name in refs[0]:
        if name not in cands[0]:
            result.outputs.append(
                OutputResult(name, [], "", np.inf, np.inf, 0.0, np.inf, 0.0, 0.0, 0, False, "missing in candidate")
            )
            continue
        result.outputs.append(
            compare_output(name, [r[name] for r in refs], [c[name] for c in cands], gates.get(name, default))
        )
    return result


NOISE_FACTOR = 2.0


def rejudge_with_noise(
    result: ParityResult, noise: ParityResult, factor: float = NOISE_FACTOR, strict: frozenset[str] = frozenset()
) -> ParityResult:
    """Let failing outputs pass when within ``factor`` x the reference's own optimizer noise.

    Outputs named in ``strict`` (a gate the user set) are never re-judged.
    """
    floors = {o.name: o.max_abs for o in noise.outputs}
    for o in result.outputs:
        floor = floors.get(o.name)
        if o.name in strict:
            continue
        o.noise_floor = floor
        if o.passed or floor is None or o.nonfinite_mismatch or not np.isfinite(o.max_abs):
            continue
        if o.max_abs <= factor * floor:
            o.passed, o.judged_by = True, "noise floor"
            o.reason = f"max|diff| {o.max_abs:.3g} within {factor:g}x the original's own {o.dtype} error {floor:.3g}"
        else:
            o.reason += f"; the original's own {o.dtype} error is {floor:.3g}"
    return result


def limit_by_baseline(result: ParityResult, baseline: ParityResult, factor: float) -> None:
    """Where ``baseline`` (the plain half cast of the same model) is finite, an output passes only within
    ``factor`` times the baseline's error."""
    limits = {o.name: o.max_abs for o in baseline.outputs if np.isfinite(o.max_abs) and o.nonfinite_mismatch == 0}
    for o in result.outputs:
        if o.passed and o.name in limits and o.max_abs > factor * limits[o.name]:
            o.passed = False
            o.reason = f"max|diff| {o.max_abs:.3g} > {factor:g}x the plain half cast's {limits[o.name]:.3g}"
