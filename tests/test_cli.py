"""The command line as the ecosystem's tools behave: --version, global options on either side of the
subcommand, onnxsim's positional output, a per-op table, saved inputs and outputs, -v steps, | head; and a
new verb from its descriptor alone."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import onnx

from normonnx import __version__
from normonnx.cli import main
from normonnx.cli.verb import Verb, passed
from tests.conftest import NO_SYMPY_FOR_TORCH, run_cli_process, skip_without


def test_version(cli):
    r = cli("--version")
    assert r.code == 0 and r.out.strip() == f"normonnx {__version__}"


def test_global_options_go_before_or_after_the_subcommand(cli, conv_bn_path, tmp_path):
    for args in (
        ("-v", "fold", conv_bn_path, "-o", tmp_path / "a.onnx"),
        ("fold", conv_bn_path, "-o", tmp_path / "b.onnx", "-v"),
    ):
        r = cli(*args)
        assert r.code == 0, r.err
        steps = [line for line in r.err.splitlines() if line.startswith("normonnx: ")]
        assert any("folding" in s for s in steps) and any("verifying parity" in s for s in steps), r.err
    assert cli("fold", conv_bn_path, "-o", tmp_path / "c.onnx", "--debug").code == 0


def test_positional_output_as_onnxsim_users_type_it(cli, conv_bn_path, tmp_path):
    r = cli("fold", conv_bn_path, tmp_path / "out.onnx")
    assert r.code == 0, r.err
    assert [n.op_type for n in onnx.load(tmp_path / "out.onnx").graph.node] == ["Conv", "Relu", "Conv"]


def test_fold_prints_a_per_op_before_after_table(cli, conv_bn_path, tmp_path):
    r = cli("fold", conv_bn_path, "-o", tmp_path / "out.onnx")
    rows = {
        line.split()[0]: line.split()[1:]
        for line in r.out.splitlines()
        if line.split()[:1] in (["Conv"], ["BatchNormalization"], ["Relu"])
    }
    assert rows["BatchNormalization"] == ["2", "0", "-2"]
    assert rows["Conv"] == ["2", "2"] and rows["Relu"] == ["1", "1"]
    assert "|---" not in r.out and "**" not in r.out  # plain text, not Markdown


def test_check_saves_its_inputs_and_outputs(cli, conv_bn_path, tmp_path):
    folded = tmp_path / "f.onnx"
    assert cli("fold", conv_bn_path, "-o", folded).code == 0
    r = cli("check", folded, "--against", conv_bn_path, "--save-inputs", tmp_path / "in.npz",
            "--save-outputs", tmp_path / "out.npz", "--samples", "2")  # fmt: skip
    assert r.code == 0, r.err
    inputs = np.load(tmp_path / "in.npz")
    assert list(inputs) == ["input"] and inputs["input"].shape == (2, 2, 3, 16, 16)
    outputs = np.load(tmp_path / "out.npz")
    (ref_key,) = [k for k in outputs if k.startswith("reference/")]
    cand_key = "candidate/" + ref_key.removeprefix("reference/")
    np.testing.assert_allclose(outputs[cand_key], outputs[ref_key], atol=1e-4)
    # the saved inputs are real inputs: fed back, they give the same verdict
    again = cli("check", folded, "--against", conv_bn_path, "--inputs", tmp_path / "in.npz", "--json")
    assert again.code == 0 and json.loads(again.out)["parity"]["samples"] == 2


def test_convert_prints_plain_text(cli, tmp_path):
    import pytest

    pytest.importorskip("torch")
    skip_without("sympy", NO_SYMPY_FOR_TORCH)
    r = cli("convert", "normonnx.zoo:resnet_bn", "-o", tmp_path / "out", "--no-floor", "--runs", "5")
    assert r.code == 0, r.err
    assert "|---|" not in r.out and not r.out.lstrip().startswith("#")
    assert (tmp_path / "out" / "report.md").read_text().startswith("# resnet_bn")


def test_a_closed_stdout_ends_quietly(conv_bn_path):
    proc = subprocess.run(
        f"{sys.executable} -m normonnx inspect {conv_bn_path} | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


def test_usage_mistakes_are_one_line_in_a_real_process(tmp_path):
    r = run_cli_process("bench", "x.onnx", "--runs", "zero", cwd=tmp_path)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "--runs" in r.err


def test_an_unknown_option_points_to_the_subcommand_help(cli, conv_bn_path, tmp_path):
    r = cli("fold", conv_bn_path, "-o", tmp_path / "o.onnx", "--nosuch")
    assert r.code == 2 and "see normonnx fold --help" in r.err and len(r.err.strip().splitlines()) == 1


def test_many_files_under_v_log_each_files_steps(cli, conv_bn_path, tmp_path):
    r = cli("-v", "fold", conv_bn_path, conv_bn_path.parent / "missing.onnx", "-o", tmp_path / "out")
    steps = [line for line in r.err.splitlines() if line.startswith("normonnx: ")]
    assert any("folding" in s for s in steps) and any("verifying parity" in s for s in steps), r.err


@dataclass
class NodeCount:
    """The report of the verb below: what any pipeline's report offers the handler."""

    model: str
    nodes: int
    most: int | None

    @property
    def passed(self) -> bool:
        return self.most is None or self.nodes <= self.most

    def to_dict(self) -> dict:
        return {"model": self.model, "nodes": self.nodes, "passed": self.passed}


def _count_arguments(p) -> None:
    p.add_argument("input")
    p.add_argument("--most", type=int)
    p.add_argument("--report")
    p.add_argument("--json", action="store_true")


COUNT = Verb(
    "count",
    "count the nodes of an ONNX file",
    _count_arguments,
    files=lambda args: (args.input, None),
    run=lambda c: NodeCount(c.source, len(onnx.load(c.source).graph.node), **c.options),
    render=lambda r: f"{r.nodes} nodes",
    options=lambda args: {"most": args.most},
    report="json",
    title=lambda c, r: f"normonnx count {c.source}",
    close=passed,
)


def test_a_descriptor_is_all_a_new_verb_needs(capsys, conv_bn_path, tmp_path):
    report = tmp_path / "count.json"
    code = main(["count", str(conv_bn_path), "--most", "3", "--json", "--report", str(report)], commands=[COUNT])
    captured = capsys.readouterr()
    expected = {"model": str(conv_bn_path), "nodes": 5, "passed": False}  # Conv, BN, Relu, BN, Conv
    assert code == 1 and json.loads(captured.out) == expected
    assert captured.err == "FAILED\n"  # with --json the verdict goes to stderr
    assert json.loads(report.read_text()) == expected

    assert main(["count", str(conv_bn_path)], commands=[COUNT]) == 0
    assert capsys.readouterr().out == f"normonnx count {conv_bn_path}\n5 nodes\nPASSED\n"

    before = conv_bn_path.read_bytes()
    assert main(["count", str(conv_bn_path), "--report", str(conv_bn_path)], commands=[COUNT]) == 2
    assert "--report would overwrite" in capsys.readouterr().err and conv_bn_path.read_bytes() == before
    # the parser knows the verbs it was given, and only those
    assert main(["fold", str(conv_bn_path), "-o", str(tmp_path / "o.onnx")], commands=[COUNT]) == 2
    assert "invalid choice: 'fold'" in capsys.readouterr().err
