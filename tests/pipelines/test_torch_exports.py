"""Folding what torch's exporters actually write: dynamo (raw and optimized) and TorchScript."""

from __future__ import annotations

import warnings

import onnx
import pytest

from normonnx.pipelines.fold import fold
from normonnx.validate.parity import compare
from normonnx.validate.runner import SessionConfig, run, session

torch = pytest.importorskip("torch")
from tests.torchfront.patterns import NETS, build  # noqa: E402

pytestmark = pytest.mark.slow

MODES = {
    "dynamo-raw": dict(dynamo=True, opset_version=18, optimize=False),
    "dynamo-optimized": dict(dynamo=True, opset_version=18, optimize=True),
    "torchscript-11": dict(dynamo=False, opset_version=11),
    "torchscript-17": dict(dynamo=False, opset_version=17),
}
FOLDABLE = ("batchnorm", "weightstd", "weightnorm", "affine")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache: dict[tuple[str, str], tuple] = {}
    folder = tmp_path_factory.mktemp("exports")

    def get(net: str, mode: str):
        if (net, mode) not in cache:
            model, x = build(net)
            path = folder / f"{net}-{mode}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), str(path), verbose=False, **MODES[mode])
            with torch.no_grad():
                expected = model(x).numpy()
            cache[(net, mode)] = (path, x.numpy(), expected)
        return cache[(net, mode)]

    return get


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("net", list(NETS))
def test_every_foldable_normalization_folds_with_parity(exported, net, mode):
    path, x, expected = exported(net, mode)
    model, report = fold(path, verify=True)
    onnx.checker.check_model(model, full_check=True)
    assert report.parity.passed, report.parity.to_dict()
    left = [k for k in report.after.norms if k.split(":")[0] in FOLDABLE]
    assert not left, (left, [(n.anchor, n.why) for n in report.kept])
    kept = {n.family for n in report.kept}
    assert kept <= {"groupnorm"}, [(n.family, n.anchor, n.why) for n in report.kept]
    assert report.after.nodes <= report.before.nodes
    # and against torch eager, at the fp32 gate
    sess = session(model, SessionConfig())
    name = model.graph.input[0].name
    got = run(sess, {name: x})
    result = compare([{"y": expected}], [{"y": next(iter(got.values()))}])
    assert result.passed, result.to_dict()


def test_optimized_dynamo_export_still_gains_the_folds_it_misses(exported):
    """dynamo's optimizer folds Conv->BN; it leaves BN-before-conv and Linear->BN->Linear."""
    path, _, _ = exported("patterns", "dynamo-optimized")
    _, report = fold(path)
    assert report.before.norms.get("batchnorm:op", 0) >= 2
    assert report.after.norms.get("batchnorm:op", 0) == 0
    assert report.after.nodes < report.before.nodes


def test_one_fold_leaves_nothing_for_the_next(tmp_path):
    """TorchScript's GroupNorm computes each reshape from Shape of the tensor before: folding one Shape makes
    the next one's input shape inferable, so fold infers again and goes on until nothing is left."""
    from normonnx.pipelines.export import export_model
    from normonnx.zoo import CHECKPOINTS

    model, _ = export_model(
        "normonnx.zoo:bit_ws_gn", checkpoint=str(CHECKPOINTS / "bit_ws_gn.safetensors"), opset=13, verify=False
    )
    shapes_before = sum(n.op_type == "Shape" for n in model.graph.node)
    once, first = fold(model, verify=True)
    twice, second = fold(once, verify=True)
    assert first.parity.passed and second.parity.passed
    assert shapes_before >= 3 and not [n for n in once.graph.node if n.op_type == "Shape"]
    assert len(twice.graph.node) == len(once.graph.node) and sum(second.rewrites.values()) == 0
