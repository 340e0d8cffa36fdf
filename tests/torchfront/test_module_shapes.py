"""export and convert with modules whose inputs and outputs are not one tensor each."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from normonnx.errors import UnusableInputError  # noqa: E402


class _Outputs(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.ln, self.gn = kind, nn.LayerNorm(8), nn.GroupNorm(2, 8)

    def forward(self, x, unused=None):
        g, ln = self.gn(x), self.ln(x.transpose(1, 3))
        if self.kind == "dict":
            return {"g": g, "l": ln}
        if self.kind == "nested":
            return g, (ln, x * 2)
        return g


def dict_outputs():
    return _Outputs("dict").eval(), (torch.randn(2, 8, 4, 8),)


def nested_outputs():
    return _Outputs("nested").eval(), (torch.randn(2, 8, 4, 8),)


def unused_input():
    return _Outputs("one").eval(), (torch.randn(2, 8, 4, 8), torch.randn(2, 3))


def raises():
    raise RuntimeError("boom")


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["dict_outputs", "nested_outputs", "unused_input"])
@pytest.mark.parametrize("opset", [13, 18])
def test_dict_nested_outputs_and_unused_inputs_export_with_parity(cli, tmp_path, factory, opset):
    """TorchScript drops an input the graph never reads; both exporters flatten dicts and nested tuples."""
    r = cli("export", f"tests.torchfront.test_module_shapes:{factory}", "-o", tmp_path / "m.onnx", "--opset", opset)
    assert r.code == 0, r.err
    assert "parity vs torch eager PASSED" in r.out


@pytest.mark.slow
@pytest.mark.parametrize(("factory", "outputs"), [("dict_outputs", 2), ("nested_outputs", 3)])
def test_check_against_torch_takes_dict_and_nested_outputs(cli, tmp_path, factory, outputs):
    """check --torch flattens a module's outputs as the exporters do (it once crashed on a dict)."""
    spec = f"tests.torchfront.test_module_shapes:{factory}"
    assert cli("export", spec, "-o", tmp_path / "m.onnx").code == 0
    r = cli("check", tmp_path / "m.onnx", "--torch", spec, "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["passed"] and len(report["parity"]["outputs"]) == outputs
    assert all(o["max_abs"] <= o["threshold"] for o in report["parity"]["outputs"])


def test_a_failed_convert_leaves_no_folder(cli, tmp_path):
    out = tmp_path / "report"
    r = cli("convert", "tests.torchfront.test_module_shapes:raises", "-o", out)
    assert r.code == 2 and "boom" in r.err
    assert not out.exists()


def test_convert_removes_what_it_wrote_when_a_late_step_fails(tmp_path, monkeypatch):
    from normonnx.pipelines import convert as convert_module

    def broken_bench(*_args, **_kwargs):
        raise UnusableInputError("bench exploded")

    monkeypatch.setattr(convert_module, "_bench", broken_bench)
    out = tmp_path / "report"
    with pytest.raises(UnusableInputError, match="bench exploded"):
        convert_module.convert("tests.torchfront.test_module_shapes:dict_outputs", out, opset=13, floor=False)
    assert not out.exists()


def conv_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()


@pytest.mark.slow
def test_an_export_failure_is_one_clean_line_with_torchs_reason(cli, tmp_path):
    """The dynamo exporter puts the cause after paragraphs of advice, in colour, and logs at ERROR."""
    r = cli(
        "export", "tests.torchfront.test_module_shapes:conv_net", "--input-shape", "1,4,8,8", "-o", tmp_path / "m.onnx"
    )
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert "expected input[1, 4, 8, 8] to have 3 channels" in r.err and "\x1b[" not in r.err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("opset", [13, 18])
def test_dynamic_axes_are_exported_and_checked_at_two_sizes(cli, tmp_path, opset):
    import numpy as np
    import onnx

    from tests.builders import run_model

    out = tmp_path / "style.onnx"
    r = cli(
        "export", "normonnx.zoo:style_in", "-o", out, "--opset", opset, "--dynamic-batch",
        "--dynamic", "x:2:height", "--dynamic", "x:3:width", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["parity"]["passed"] and report["parity_resized"]["passed"]
    assert report["resized_shapes"] == [[2, 3, 64, 64]]  # batch 1 -> 2, 32 x 32 -> 64 x 64
    model = onnx.load(out)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    for shape in ((1, 3, 32, 32), (3, 3, 48, 40)):
        y = next(iter(run_model(model, {"x": np.zeros(shape, np.float32)}).values()))
        assert y.shape[0] == shape[0] and y.shape[2:] == shape[2:]


def test_a_dynamic_axis_for_an_unknown_input_is_one_line(cli, tmp_path):
    r = cli("export", "normonnx.zoo:style_in", "-o", tmp_path / "o.onnx", "--dynamic", "pixels:2")
    assert r.code == 2 and "no input 'pixels'" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()
