"""Calibration and held-out inputs for int8: real ones split so that the proof sees what calibration did not,
or seeded ones, which calibrate a model to noise and are said to be the weaker choice.

An .npz holds arrays named like the model's inputs (a model with one input takes one array of any name): one
set, whose leading axis is a batch of samples (cut into feeds of a few samples), or several sets stacked on an
extra leading axis.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from normonnx.errors import UnusableInputError
from normonnx.results import ProbedShapes
from normonnx.validate.inputs import InputSpec, read_input_arrays, sets_from_arrays
from normonnx.validate.probe import probed_feeds

Feed = dict[str, np.ndarray]
HELD_OUT_SHARE = 0.25  # of --data, when no --held-out file is given
DYNAMIC_BATCH_FEED = 8  # samples per calibration feed along a dynamic batch axis
SEEDED_CALIBRATION, SEEDED_HELD_OUT = 16, 4
SEEDED_WARNING = (
    "calibrated on seeded random inputs: the activation ranges are those of noise, not of your data;"
    " pass --data CALIB.npz for a model you deploy"
)


@dataclass
class Int8Inputs:
    """Feeds for calibration, feeds for the proof (never the same samples), and where they came from."""

    calibration: list[Feed]
    held_out: list[Feed]
    source: str  # for the report
    seeded: bool = False


def fixed_batch(spec: InputSpec) -> int | None:
    """The model's fixed batch for this input (None where axis 0 is dynamic or absent)."""
    if spec.shape is None or not spec.shape:
        return None
    first = spec.shape[0]
    return first if isinstance(first, int) and first > 0 else None


def _feeds(path: str | os.PathLike, specs: list[InputSpec]) -> list[Feed]:
    """The sets of an .npz. One set of N samples (arrays of the inputs' rank) is cut into feeds of the model's
    batch where it is fixed and divides N, else of a few samples each along a dynamic batch axis."""
    arrays = read_input_arrays(path, specs, one_array_any_name=True)
    one_set = bool(specs) and all(
        s.name in arrays and s.shape is not None and arrays[s.name].ndim == len(s.shape) >= 1 for s in specs
    )
    counts = {len(arrays[s.name]) for s in specs} if one_set else set()
    if len(counts) > 1:
        raise UnusableInputError(f"{path}: the inputs' arrays hold different numbers of samples")
    count = counts.pop() if counts else 0
    fixed = {fixed_batch(s) for s in specs}
    if one_set and fixed != {None}:
        step = fixed.pop() if len(fixed) == 1 else None
        if step and count > step and count % step == 0:  # N samples of a model that takes `step` at a time
            arrays = {k: v.reshape(count // step, step, *v.shape[1:]) for k, v in arrays.items()}
        return sets_from_arrays(path, arrays, specs)
    sets = sets_from_arrays(path, arrays, specs)
    if one_set and count >= 2:
        step = DYNAMIC_BATCH_FEED if count >= 2 * DYNAMIC_BATCH_FEED else 1
        sets = [{k: v[i : i + step] for k, v in sets[0].items()} for i in range(0, count, step)]
    return sets


def int8_inputs(
    specs: list[InputSpec],
    data: str | os.PathLike | None,
    held_out: str | os.PathLike | None,
    probed: ProbedShapes | None,
) -> Int8Inputs:
    """Calibration and held-out feeds: ``held_out`` as given, else the last quarter of ``data``; without
    ``data``, seeded inputs at the ``probed`` shapes (those the model runs at)."""
    if data is None:
        if held_out is not None:
            raise UnusableInputError("--held-out: applies with --data CALIB.npz (the calibration data)")
        assert probed is not None
        calibration = probed_feeds(specs, probed, SEEDED_CALIBRATION, seed=1000)
        proof = probed_feeds(specs, probed, SEEDED_HELD_OUT, seed=2000)
        source = f"{SEEDED_CALIBRATION} seeded input sets at {probed.describe()}, {SEEDED_HELD_OUT} others held out"
        return Int8Inputs(calibration, proof, source, seeded=True)
    feeds = _feeds(data, specs)
    if held_out is not None:
        return Int8Inputs(feeds, _feeds(held_out, specs), f"calibration {data}, held out {held_out}")
    if len(feeds) < 2:
        raise UnusableInputError(
            f"{data}: one input set; int8 needs some to calibrate and others to prove it (or pass --held-out)"
        )
    split = len(feeds) - max(1, round(len(feeds) * HELD_OUT_SHARE))
    return Int8Inputs(
        feeds[:split], feeds[split:], f"{data}: {split} feeds to calibrate, the last {len(feeds) - split} held out"
    )


CALIBRATION_SHARE = 0.25  # of one batch of samples (convert's --data), the first ones


def calibration_count(samples: int) -> int:
    """How many of ``samples`` calibrate (the first ones); the rest prove."""
    return max(1, int(samples * CALIBRATION_SHARE))


def split_samples(spec: InputSpec, samples: np.ndarray) -> Int8Inputs:
    """One input's batch of samples: the first CALIBRATION_SHARE to calibrate, the rest held out, cut into feeds
    of the model's batch where it is fixed (a remainder that fills none is left out), else of a few samples."""
    cut = calibration_count(len(samples))
    step = fixed_batch(spec) or DYNAMIC_BATCH_FEED
    fixed = fixed_batch(spec) is not None
    if cut >= len(samples) or (fixed and (cut < step or len(samples) - cut < step)):
        raise UnusableInputError(f"{len(samples)} samples: int8 needs some to calibrate and others to prove it")

    def feeds(part: np.ndarray) -> list[Feed]:
        ends = range(0, len(part) - step + 1 if fixed else len(part), step)
        return [{spec.name: part[i : i + step]} for i in ends]

    source = f"the first {cut} of {len(samples)} samples to calibrate, the other {len(samples) - cut} held out"
    return Int8Inputs(feeds(samples[:cut]), feeds(samples[cut:]), source)
