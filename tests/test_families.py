"""The family table: its reference functions agree with torch, its auto forms with the benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from normonnx.families import BY_KEY, BY_OP, FAMILIES
from tests.conftest import requires_torch

ROOT = Path(__file__).resolve().parents[1]


@requires_torch
def test_every_family_is_described_once_and_completely():

    assert len({f.key for f in FAMILIES}) == len(FAMILIES)
    for f in FAMILIES:
        assert f.title and f.torch_types and f.decomposition and f.fold_note
        assert (f.onnx_op is None) == (f.first_opset is None)
        assert f.auto_form in ("op", "decomposed")
    assert set(BY_OP) == {
        "BatchNormalization",
        "LayerNormalization",
        "InstanceNormalization",
        "GroupNormalization",
        "RMSNormalization",
    }


@requires_torch
def test_reference_functions_match_torch():
    import torch

    from normonnx.torchfront.modules import BatchChannelNorm2d, WSConv2d
    from tests.torchfront.patterns import randomize_statistics

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 5, 5, generator=g, dtype=torch.float64)
    t = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    bn = randomize_statistics(torch.nn.BatchNorm2d(6)).double()
    gn = randomize_statistics(torch.nn.GroupNorm(3, 6)).double()
    inn = randomize_statistics(torch.nn.InstanceNorm2d(6, affine=True)).double()
    ln = randomize_statistics(torch.nn.LayerNorm(8)).double()
    rms = randomize_statistics(torch.nn.RMSNorm(8, eps=1e-6)).double()
    p = lambda m, n: getattr(m, n).detach().numpy()
    cases = [
        (
            bn(x),
            BY_KEY["batchnorm"].reference(
                x.numpy(), p(bn, "weight"), p(bn, "bias"), p(bn, "running_mean"), p(bn, "running_var")
            ),
        ),
        (gn(x), BY_KEY["groupnorm"].reference(x.numpy(), p(gn, "weight"), p(gn, "bias"), 3)),
        (inn(x), BY_KEY["instancenorm"].reference(x.numpy(), p(inn, "weight"), p(inn, "bias"))),
        (ln(t), BY_KEY["layernorm"].reference(t.numpy(), p(ln, "weight"), p(ln, "bias"))),
        (rms(t), BY_KEY["rmsnorm"].reference(t.numpy(), p(rms, "weight"))),
    ]
    ws = WSConv2d(6, 4, 3, unbiased=True, eps_in="std", gain=True, fan_in_scale=True).double()
    with torch.no_grad():
        ws.gain.uniform_(0.5, 2.0)
    cases.append(
        (
            ws.standardized_weight(),
            BY_KEY["weightstd"].reference(
                p(ws, "weight"),
                eps=1e-5,
                eps_in="std",
                unbiased=True,
                gain=p(ws, "gain").reshape(-1),
                fan_in_scale=True,
            ),
        )
    )
    bcn = randomize_statistics(BatchChannelNorm2d(6, 3)).double()
    b = bcn.batch_norm
    cases.append(
        (
            bcn(x),
            BY_KEY["batchchannelnorm"].reference(
                x.numpy(),
                [p(b, "weight"), p(b, "bias"), p(b, "running_mean"), p(b, "running_var")],
                p(bcn.channel_norm, "weight"),
                p(bcn.channel_norm, "bias"),
                3,
            ),
        )
    )
    for got, expected in cases:
        np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-10, atol=1e-10)


def test_auto_form_is_the_measured_fastest():
    """benchmarks/emit_forms.json is written by scripts/bench_emit.py; auto must win or tie every row."""
    data = json.loads((ROOT / "benchmarks" / "emit_forms.json").read_text())
    for row in data["rows"]:
        auto = BY_KEY[row["family"]].auto_form
        assert row["faster"] in (auto, "tie"), row
        assert row["parity"], row
