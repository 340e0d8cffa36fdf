"""The Python API is the CLI: every public function has a docstring, and takes each of its verb's long
options under the same name (a dash is an underscore; ``--no-X`` is ``X=False``), within the few
exceptions listed here with their reason."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import normonnx
from normonnx.cli.main import build_parser

# Options that are about the command line itself, not the work: output format, files, parallelism.
CLI_ONLY = {"json", "report", "jobs", "verbose", "debug", "custom_ops", "help", "version", "output"}
# Where the API takes the value in another shape than the option's text, and why.
RENAMED = {
    "shape": "shapes",  # repeatable NAME:D0,... -> {name: dims}
    "input_shape": "input_shapes",  # repeatable -> a list of shapes
    "tol": "gates",  # repeatable OUTPUT=ATOL[,RTOL] -> {output: Gate}
    "rtol": "default_gate",  # --rtol and --atol -> one Gate
    "atol": "default_gate",
    "map": "renames",  # RENAMES.json -> the mapping itself
}
API = {  # verb -> (function, where its settings may also live)
    "fold": ("fold_file", "FoldOptions"),
    "emit": ("emit_file", None),
    "half": ("half", None),
    "quantize": ("quantize_file", "Int8Settings"),
    "check": ("check", None),
    "bench": ("bench", None),
    "export": ("export_file", None),
    "convert": ("convert", None),
    "inspect": ("inspect", None),
}
FOLD_OPTIONS = {"norm_affine": "fold_norm_affine", "target": "target"}  # FoldOptions field names
INT8 = {"calibrate": "calibrate", "activations": "activations", "per_tensor": "per_channel"}


def _long_options(verb: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[verb]
    names = set()
    for action in sub._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            names.add(longs[0][2:].replace("-", "_"))
    return names - CLI_ONLY


def _parameters(verb: str) -> set[str]:
    function, settings = API[verb]
    params = set(inspect.signature(getattr(normonnx, function)).parameters)
    if function in ("export_file", "quantize_file"):
        params |= _forwarded(verb)
    if settings:
        params |= {f.name for f in dataclasses.fields(getattr(normonnx, settings))}
    return params


def _forwarded(verb: str) -> set[str]:
    """Parameters a public function passes on by **kwargs to the function that takes them."""
    from normonnx.pipelines.export import export_model, export_module
    from normonnx.pipelines.quantize import quantize_model

    exported = set(inspect.signature(export_module).parameters) | set(inspect.signature(export_model).parameters)
    return {"export": exported, "quantize": set(inspect.signature(quantize_model).parameters)}.get(verb, set())


@pytest.mark.parametrize("verb", sorted(API))
def test_every_long_option_is_a_parameter_of_the_same_name(verb):
    params = _parameters(verb)
    missing = []
    for option in sorted(_long_options(verb)):
        name = RENAMED.get(option, option)
        positive = name[3:] if name.startswith("no_") else name
        candidates = {name, positive, FOLD_OPTIONS.get(name), INT8.get(name)}
        if not candidates & params:
            missing.append(option)
    assert not missing, f"{API[verb][0]} lacks {missing}"


@pytest.mark.parametrize("name", sorted(normonnx.__all__))
def test_every_public_name_has_a_docstring(name):
    obj = getattr(normonnx, name)
    assert (obj.__doc__ or "").strip(), f"normonnx.{name} has no docstring"


def test_convert_takes_output_as_the_cli_does():
    assert list(inspect.signature(normonnx.convert).parameters)[:2] == ["spec", "output"]
