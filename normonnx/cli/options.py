"""Command-line options, each defined once and shared by the commands that take it.

Values are checked here, before any work: an option that cannot apply is
refused with a one-line error, never ignored.
"""

from __future__ import annotations

import argparse

from normonnx.errors import UnusableInputError

STYLES = ("auto", "op", "decomposed")


def positive_int(flag: str, minimum: int = 1):
    """An argparse type: an integer >= ``minimum``, else a one-line usage error naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} {value}: must be at least {minimum}")
        return value

    return parse


def add_global(p: argparse.ArgumentParser, *, in_subcommand: bool) -> None:
    """-v and --debug, accepted before or after the subcommand."""
    default = argparse.SUPPRESS if in_subcommand else False
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="log each step to stderr")
    p.add_argument("--debug", action="store_true", default=default, help="show tracebacks of unexpected errors")
    p.add_argument(
        "--custom-ops",
        action="append",
        metavar="LIB",
        default=argparse.SUPPRESS if in_subcommand else None,
        help="an onnxruntime custom-op library (.so/.dll) every onnxruntime run loads; repeatable",
    )


def add_shape(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", action="append", metavar="NAME:D0,D1,...", help="shape of a dynamic input")


def add_provider(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--provider",
        choices=("cpu", "cuda", "tensorrt"),
        default="cpu",
        help="onnxruntime execution provider for the candidate (default cpu)",
    )
    p.add_argument(
        "--runtime",
        choices=("onnxruntime", "openvino"),
        default="onnxruntime",
        help="what runs the candidate: onnxruntime (default) or OpenVINO's CPU plugin (pip install openvino)",
    )


def add_precision(p: argparse.ArgumentParser, int8: bool = False) -> None:
    if int8:
        p.add_argument(
            "--precision",
            choices=("fp16", "bf16", "int8"),
            help="also write model.<precision>.onnx: normonnx half (verified half-faithfully) or normonnx quantize"
            " (calibrated on the first quarter of --data, proven on the rest)",
        )
        return
    p.add_argument(
        "--precision", choices=("fp16", "bf16"), help="also convert with normonnx half (verified half-faithfully)"
    )


def add_norm_affine(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--norm-affine",
        action="store_true",
        help="also fold LayerNorm/RMSNorm/GroupNorm/InstanceNorm affines into the linear op after them",
    )


def add_json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=what)


def add_jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--jobs", type=positive_int("--jobs"), default=1, help="files processed at once, many-file runs (default 1)"
    )


def add_deploy_target(p: argparse.ArgumentParser) -> None:
    from normonnx.targets import TARGETS

    p.add_argument(
        "--target",
        choices=tuple(TARGETS),
        help="the runtime the model is deployed on: caps the opset at the newest it takes and writes each"
        " normalization as the op only where it runs that op natively (normonnx.targets)",
    )


def add_form(p: argparse.ArgumentParser, default_opset: int | None) -> None:
    """--opset, --norm-style and --target: what every command that writes normalizations takes."""
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help=f"target opset (default: {default_opset or 'the input model' + chr(39) + 's'}"
        + (", or the newest --target takes if older)" if default_opset else ", capped by --target)"),
    )
    p.add_argument(
        "--norm-style",
        choices=STYLES,
        default="auto",
        help="op: standard ops where the opset has them; decomposed: exact subgraphs;"
        " auto: the form measured fastest on onnxruntime CPU (default)",
    )
    add_deploy_target(p)


def add_emission(p: argparse.ArgumentParser, default_opset: int | None) -> None:
    """What export and emit write (opset, style), whether they verify it, and their report."""
    add_form(p, default_opset)
    p.add_argument("--no-verify", action="store_true", help="skip the parity check")
    p.add_argument("--report", metavar="REPORT.json", help="also write the report as JSON")
    add_json(p, "print the report as JSON")


def add_files(p: argparse.ArgumentParser, what: str) -> None:
    """One file in and one out (``IN -o OUT`` or ``IN OUT``), or many (``FILES_OR_DIRS... -o OUTDIR``)."""
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="IN",
        help=f"ONNX file to {what} (never modified); or several files and folders, with -o OUTDIR",
    )
    p.add_argument("-o", "--output", metavar="OUT", help="the ONNX file to write; a folder for many files")
    add_shape(p)
    add_jobs(p)


def add_factory(p: argparse.ArgumentParser, output_help: str) -> None:
    p.add_argument("factory", metavar="MODULE:FACTORY", help="callable returning an nn.Module or (module, inputs)")
    p.add_argument("-o", "--output", required=True, help=output_help)
    p.add_argument("--checkpoint", help="weights: .safetensors, or a torch state dict (loaded with weights_only=True)")
    p.add_argument("--input-shape", action="append", metavar="1,3,224,224", help="example input shape, once per input")
    p.add_argument("--dynamic-batch", action="store_true", help="axis 0 of every input is a dynamic batch")
    p.add_argument(
        "--dynamic",
        action="append",
        default=[],
        metavar="NAME:AXIS[:DIM]",
        help="a dynamic axis of input NAME (named DIM); parity is checked at two sizes",
    )


def factory_options(args: argparse.Namespace) -> dict:
    """What export and convert take from MODULE:FACTORY's options: weights, example shapes, target form."""
    from normonnx.torchfront.exporter import parse_input_shape

    return {
        "checkpoint": args.checkpoint,
        "input_shapes": [parse_input_shape(s) for s in args.input_shape or []],
        "opset": args.opset,
        "norm_style": args.norm_style,
        "target": args.target,
        "dynamic_batch": args.dynamic_batch,
        "dynamic": args.dynamic,
    }


def run_options(args: argparse.Namespace) -> dict:
    """Where and on what shapes check and bench run the models."""
    from normonnx.validate.inputs import parse_shape_overrides

    return {"provider": args.provider, "runtime": args.runtime, "shapes": parse_shape_overrides(args.shape)}


def tolerances(items: list[str] | None) -> dict:
    """--tol OUTPUT=ATOL[,RTOL] (repeatable) as gates by output name."""
    from normonnx.validate.parity import Gate

    gates = {}
    for item in items or []:
        name, sep, values = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            parts = [float(v) for v in values.split(",")]
            if len(parts) > 2 or any(not (0 <= v < float("inf")) for v in parts):  # also refuses nan and inf
                raise ValueError
            gates[name] = Gate(parts[0], parts[1] if len(parts) > 1 else parts[0])
        except (ValueError, IndexError):
            raise UnusableInputError(f"--tol '{item}': expected OUTPUT=ATOL[,RTOL], finite tolerances >= 0") from None
    return gates
