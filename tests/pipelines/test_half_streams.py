"""normonnx half on residual streams beyond fp16 (issue 20): rescaled exactly, searched, repaired.

The models are torch-born residual networks whose stream is pushed past 65504 by scaling one layer,
as trained SDXL VAEs and T5 encoders carry it. Every written model is judged in true half arithmetic
by onnx's ReferenceEvaluator (``validate.true_half``), independent of the half-faithful evaluator
normonnx's own gate uses, against the float32 model run on onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from normonnx.graph.precision import to_float16
from normonnx.pipelines.check import check
from normonnx.pipelines.half import half_file, half_model
from normonnx.validate.true_half import true_half_outputs
from tests.builders import GraphBuilder, run_model
from tests.conftest import run_cli_process

torch = pytest.importorskip("torch")
nn = torch.nn
GATE = 1e-2  # DESIGN.md section 5: max|diff| <= 1e-2 * max(1, max|ref|)


class _Resnet(nn.Module):
    def __init__(self, c: int, gain: float) -> None:
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, c), nn.Conv2d(c, c, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(8, c), nn.Conv2d(c, c, 3, padding=1)
        with torch.no_grad():
            self.c2.weight.mul_(gain)
            self.c2.bias.mul_(gain)

    def forward(self, x):
        h = self.c1(nn.functional.silu(self.n1(x)))
        return x + self.c2(nn.functional.silu(self.n2(h)))


class VaeLikeDecoder(nn.Module):
    """conv_in -> resnet -> attention -> resnet -> upsample -> resnet -> GroupNorm/SiLU/conv_out, the mid
    stream near 2e5 (conv_in's weights scaled)."""

    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(4, c, 3, padding=1)
        with torch.no_grad():
            self.conv_in.weight.mul_(1e5)
        self.r1, self.r2, self.r3 = _Resnet(c, 3e3), _Resnet(c, 3e3), _Resnet(c, 1.0)
        self.norm, self.q, self.k, self.v, self.o = nn.GroupNorm(8, c), *(nn.Linear(c, c) for _ in range(4))
        with torch.no_grad():
            self.o.weight.mul_(1e4)
        self.up, self.conv_up = nn.Upsample(scale_factor=2), nn.Conv2d(c, c, 3, padding=1)
        self.norm_out, self.conv_out = nn.GroupNorm(8, c), nn.Conv2d(c, 3, 3, padding=1)

    def attention(self, x):
        b, c, h, w = x.shape
        y = self.norm(x).flatten(2).transpose(1, 2)
        a = torch.softmax(self.q(y) @ self.k(y).transpose(1, 2) / c**0.5, -1) @ self.v(y)
        return x + self.o(a).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, z):
        x = self.r2(self.attention(self.r1(self.conv_in(z))))
        x = self.r3(self.conv_up(self.up(x)))
        return self.conv_out(nn.functional.silu(self.norm_out(x)))


class T5LikeEncoder(nn.Module):
    """Embedding -> blocks of (RMSNorm -> feed-forward) added to the stream -> final RMSNorm; the
    feed-forward's output projection scaled so the stream grows past fp16 (T5's known failure)."""

    def __init__(self, d: int = 32, blocks: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, d)
        self.wi = nn.ModuleList(nn.Linear(d, 2 * d, bias=False) for _ in range(blocks))
        self.wo = nn.ModuleList(nn.Linear(2 * d, d, bias=False) for _ in range(blocks))
        self.scales = nn.ParameterList(nn.Parameter(torch.ones(d)) for _ in range(blocks + 1))
        with torch.no_grad():
            for wo in self.wo:
                wo.weight.mul_(1e5)

    def rms(self, x, k: int):
        return self.scales[k] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def forward(self, ids):
        x = self.embed(ids)
        for k, (wi, wo) in enumerate(zip(self.wi, self.wo, strict=True)):
            x = x + wo(torch.relu(wi(self.rms(x, k))))
        return self.rms(x, len(self.wi))


def _export(module, example, path, names) -> onnx.ModelProto:
    torch.manual_seed(0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), opset_version=18, dynamo=False, input_names=names[:-1],
                          output_names=names[-1:])  # fmt: skip
    return onnx.load(path)


@pytest.fixture(scope="module")
def stress(tmp_path_factory):
    """{name: (path, feeds)} for the VAE-like decoder and the T5-like encoder."""
    folder = tmp_path_factory.mktemp("stress")
    torch.manual_seed(0)
    vae = VaeLikeDecoder()
    torch.manual_seed(1)
    t5 = T5LikeEncoder()
    z = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    ids = np.random.default_rng(1).integers(0, 64, (1, 12)).astype(np.int64)
    _export(vae, (torch.from_numpy(z),), folder / "vae.onnx", ["z", "image"])
    _export(t5, (torch.from_numpy(ids),), folder / "t5.onnx", ["ids", "hidden"])
    return {"vae": (folder / "vae.onnx", {"z": z}), "t5": (folder / "t5.onnx", {"ids": ids})}


def _true_half_error(half: onnx.ModelProto, float32: onnx.ModelProto, feeds: dict) -> tuple[float, bool]:
    """(max|diff| / max(1, max|ref|), finite) of ``half`` in true half arithmetic against ``float32``."""
    ref = run_model(float32, feeds)
    got = true_half_outputs(half, [feeds])[0]
    worst, finite = 0.0, True
    for name, r in ref.items():
        finite &= bool(np.isfinite(got[name]).all())
        worst = max(worst, float(np.abs(got[name] - r).max() / max(1.0, np.abs(r).max())))
    return worst, finite


@pytest.mark.parametrize("name", ["vae", "t5"])
def test_a_stream_beyond_fp16_is_rescaled_and_the_model_stays_in_half(stress, tmp_path, name):
    path, feeds = stress[name]
    model = onnx.load(path)
    np.savez(tmp_path / "feeds.npz", **feeds)
    _, plain_finite = _true_half_error(to_float16(model), model, feeds)
    assert not plain_finite  # the point: a plain cast overflows
    report = half_file(path, tmp_path / "half.onnx", inputs=str(tmp_path / "feeds.npz"))
    assert report.passed, report.parity.summary()
    assert report.rescaled, report.rescale_refused
    assert all(r.peak * 2.0**-r.k <= 65504 / 8 for r in report.rescaled)
    assert report.activations_half >= 0.95
    assert report.linear_ops_half[0] == report.linear_ops_half[1] > 0
    error, finite = _true_half_error(onnx.load(tmp_path / "half.onnx"), model, feeds)
    assert finite and error <= GATE, error


def test_without_rescaling_the_stream_stays_in_float32_islands(stress, tmp_path):
    path, feeds = stress["vae"]
    np.savez(tmp_path / "feeds.npz", **feeds)
    _, report = half_model(str(path), inputs=str(tmp_path / "feeds.npz"), rescale=False)
    assert not report.rescaled
    assert any("in calibration, beyond" in k.reason for k in report.kept)
    assert report.activations_half < 0.95


def test_a_plain_fp16_file_comes_back_finite_and_accurate(stress, tmp_path):
    path, feeds = stress["vae"]
    model = onnx.load(path)
    onnx.save(to_float16(model), tmp_path / "plain16.onnx")
    np.savez(tmp_path / "feeds.npz", **feeds)
    report = half_file(tmp_path / "plain16.onnx", tmp_path / "repaired.onnx", inputs=str(tmp_path / "feeds.npz"))
    assert report.passed and any("widened exactly to float32" in n for n in report.notes)
    # Judged against the float32 model the fp16 file came from: its weights were fp16-rounded once.
    error, finite = _true_half_error(onnx.load(tmp_path / "repaired.onnx"), model, feeds)
    assert finite and error <= GATE, error


def test_check_without_a_reference_finds_where_a_half_file_overflows(stress, tmp_path):
    path, _ = stress["vae"]
    onnx.save(to_float16(onnx.load(path)), tmp_path / "plain16.onnx")
    report = check(tmp_path / "plain16.onnx", localize=True)
    assert not report.passed
    first = report.localization.first
    assert first is not None and first.nonfinite > 0
    assert "conv_in" in first.node  # the stream's writer: where the values first pass 65504
    assert any("widened exactly" in n for n in report.notes)


def cancelling_model() -> onnx.ModelProto:
    """(sigmoid(x W) + 3000) - 3000: fp16 keeps nothing of the small term (its spacing at 3000 is 2)."""
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=18)
    x = b.input("x", [2, 16])
    s = b.node("Sigmoid", [b.node("MatMul", [x, b.weight(rng.standard_normal((16, 16)) * 0.5)])])
    big = b.weight(np.array(3000.0))
    shifted = b.node("Add", [s, big], name="shift")
    b.node("Relu", [b.node("Sub", [shifted, big], name="unshift")], outputs=["y"])
    b.node("Mul", [shifted, b.weight(np.array(0.001))], outputs=["z"], name="tap")
    b.output("y", [2, 16])
    b.output("z", [2, 16])
    return b.model()


def test_the_search_keeps_the_nodes_at_fault_in_float32_until_the_gate_holds():
    model = cancelling_model()
    out, report = half_model(model)
    assert report.passed, report.search
    assert len(report.search) >= 2 and report.search[-1].endswith("passed")
    searched = {k.node for k in report.kept if k.reason.startswith("search round")}
    assert searched == {"shift", "unshift"}
    feeds = {"x": np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)}
    error, finite = _true_half_error(out, model, feeds)
    assert finite and error <= GATE


def masked_attention() -> onnx.ModelProto:
    """Scores + Where(causal, 0, finfo(float32).min) + (1 - keep) * finfo(float32).min -> Softmax: the causal
    and the padding mask as transformers' decoders write them."""
    rng = np.random.default_rng(0)
    lowest = np.array(np.finfo(np.float32).min, np.float32)
    b = GraphBuilder(opset=18)
    x = b.input("x", [1, 6, 8])
    keep = b.input("keep", [1, 1, 1, 6], np.bool_)
    q = b.node("MatMul", [x, b.weight(rng.standard_normal((8, 8)))])
    scores = b.node("MatMul", [q, b.node("Transpose", [x], perm=[0, 2, 1])])
    causal = b.const(np.tril(np.ones((6, 6), bool)))
    scores = b.node("Add", [scores, b.node("Where", [causal, b.weight(np.zeros(1)), b.weight(lowest[None])])])
    dropped = b.node("Sub", [b.weight(np.ones(1)), b.node("Cast", [keep], to=TensorProto.FLOAT)])
    scores = b.node("Add", [scores, b.node("Squeeze", [b.node("Mul", [dropped, b.weight(lowest)]),
                                                      b.const(np.array([0], np.int64))])])  # fmt: skip
    probs = b.node("Softmax", [scores], axis=-1)
    b.node("MatMul", [probs, x], outputs=["y"])
    b.output("y", [1, 6, 8])
    return b.model()


def test_masks_are_stored_with_headroom_and_nothing_leaks_to_stderr(tmp_path):
    onnx.save(masked_attention(), tmp_path / "masked.onnx")
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((1, 6, 8)).astype(np.float32), "keep": np.array([[[[1, 1, 1, 1, 0, 0]]]], bool)}
    np.savez(tmp_path / "feeds.npz", **feeds)
    r = run_cli_process("half", tmp_path / "masked.onnx", "-o", tmp_path / "masked16.onnx", "--inputs",
                        tmp_path / "feeds.npz")  # fmt: skip
    assert r.code == 0, r.out + r.err
    assert r.err == ""
    assert "mask constants stored as -16376 in fp16" in r.out
    written = onnx.load(tmp_path / "masked16.onnx")
    lowest = min(float(numpy_helper.to_array(t).min()) for t in written.graph.initializer
                 if t.data_type == TensorProto.FLOAT16)  # fmt: skip
    assert lowest == -16376.0
    # Padded rows (every key of the last two queries but their own masked twice): finite and accurate.
    error, finite = _true_half_error(written, masked_attention(), feeds)
    assert finite and error <= GATE, error


def plain_instancenorm() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=18)
    x = b.input("x", [1, 8, 6, 6])
    h = b.node("Conv", [x, b.weight(rng.standard_normal((8, 8, 3, 3)) * 0.2)], pads=[1, 1, 1, 1])
    n = b.node("InstanceNormalization", [h, b.weight(np.ones(8)), b.weight(np.zeros(8))], name="inorm")
    b.node("Conv", [n, b.weight(rng.standard_normal((4, 8, 1, 1)))], outputs=["y"])
    b.output("y", [1, 4, 6, 6])
    return b.model()


def test_a_target_whose_kernel_keeps_statistics_in_float32_runs_instancenorm_in_half():
    model = plain_instancenorm()
    _, default = half_model(model)
    _, tensorrt = half_model(model, target="tensorrt-10")
    assert default.passed and tensorrt.passed
    assert "inorm" in {k.node for k in default.kept}
    assert "inorm" not in {k.node for k in tensorrt.kept}


def test_half_on_the_command_line_reports_the_rescaled_regions(stress, tmp_path, cli):
    path, feeds = stress["vae"]
    np.savez(tmp_path / "feeds.npz", **feeds)
    r = cli("half", path, "-o", tmp_path / "out.onnx", "--inputs", tmp_path / "feeds.npz")
    assert r.code == 0, r.out + r.err
    assert "rescaled by 2^-" in r.out and "raised from subgraphs to" in r.out
    assert any(t.data_type == TensorProto.FLOAT16 for t in onnx.load(tmp_path / "out.onnx").graph.initializer)


def test_check_without_a_reference_on_a_float32_file_is_a_one_line_error_naming_it(tmp_path, cli):
    onnx.save(plain_instancenorm(), tmp_path / "f32.onnx")
    r = cli("check", tmp_path / "f32.onnx")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert str(tmp_path / "f32.onnx") in r.err and "--against" in r.err
