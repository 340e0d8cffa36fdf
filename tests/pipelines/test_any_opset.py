"""Issue 22's end-to-end claims: a dynamo opset-18 export with Resize, Split(num_outputs), GroupNorm and
LayerNorm goes to opsets 17, 13 and 11 with parity; --target writes what the target's row says; a second
runtime (OpenVINO) checks and times it."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.slow


class DeploymentNet(nn.Module):
    """What a dynamo export writes at opset 18 for today's blocks: interpolate (Resize-18), chunk
    (Split-18 with num_outputs), GroupNorm and LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = self.gn(self.conv(x))
        y = nn.functional.interpolate(y, scale_factor=2.0, mode="nearest")
        a, b = torch.chunk(y, 2, dim=1)
        y = torch.cat([a * torch.sigmoid(b), b], dim=1).mean(dim=(2, 3))
        return self.head(self.ln(y))


def deployment_net():
    torch.manual_seed(0)
    return DeploymentNet().eval(), (torch.randn(1, 3, 8, 8),)


@pytest.fixture(scope="module")
def opset18(tmp_path_factory):
    from normonnx.cli import main

    path = tmp_path_factory.mktemp("any") / "net18.onnx"
    code = main(["export", "tests.pipelines.test_any_opset:deployment_net", "-o", str(path), "--opset", "18",
                 "--norm-style", "op"])  # fmt: skip
    assert code == 0
    ops = {n.op_type for n in onnx.load(path).graph.node}
    split = next(n for n in onnx.load(path).graph.node if n.op_type == "Split")
    assert {"Resize", "Split", "LayerNormalization"} <= ops
    assert any(a.name == "num_outputs" for a in split.attribute)
    return path


@pytest.mark.parametrize("opset", [17, 13, 11])
def test_a_dynamo_opset18_export_goes_down_with_parity(cli, opset18, tmp_path, opset):
    out = tmp_path / f"net{opset}.onnx"
    r = cli("emit", opset18, "-o", out, "--opset", opset)
    assert r.code == 0, r.err + r.out
    assert "parity PASSED" in r.out
    model = onnx.load(out)
    assert model.opset_import[0].version == opset
    assert not any(a.name == "num_outputs" for n in model.graph.node for a in n.attribute)


def test_target_tensorrt86_writes_opset17_without_newer_norm_ops(cli, tmp_path):
    out = tmp_path / "trt.onnx"
    r = cli("export", "tests.torchfront.family_nets:groupnorm", "-o", out, "--target", "tensorrt-8.6")
    assert r.code == 0, r.err
    model = onnx.load(out)
    assert model.opset_import[0].version <= 17
    assert not {"GroupNormalization", "RMSNormalization"} & {n.op_type for n in model.graph.node}
    assert "target tensorrt-8.6" in r.out and "groupnorm decomposed" in r.out


def test_check_and_bench_run_on_openvino(cli, opset18):
    pytest.importorskip("openvino")
    r = cli("check", opset18, "--against", opset18, "--runtime", "openvino")
    assert r.code == 0 and "on openvino" in r.out, r.err
    r = cli("bench", opset18, "--runtime", "openvino", "--runs", 5, "--warmup", 1)
    assert r.code == 0 and "on openvino" in r.out, r.err


def test_inspect_target_lists_what_will_not_run(cli, opset18):
    r = cli("inspect", opset18, "--target", "tensorrt-8.6")
    assert r.code == 0
    assert "opset 18: tensorrt-8.6 takes up to 17" in r.out
