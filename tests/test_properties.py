"""Property-based: random Conv/ConvTranspose/Gemm/MatMul graphs with BN, weight standardization and
affine chains -- fold never crashes, never breaks parity, only removes normalizations, and folds
what is foldable: an fp32 affine right after the linear op must go."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normonnx.pipelines.fold import fold
from tests.builders import GraphBuilder, bn_params, reduce_mean

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
POST_OPS = ("bn", "mul", "add", "sub", "div", "relu")


def _channel_const(b: GraphBuilder, rng, channels: int, rank: int, axis: int, positive: bool = False) -> str:
    shape = [1] * rank
    shape[axis] = channels
    values = rng.uniform(0.5, 2.0, shape) if positive else rng.standard_normal(shape)
    return b.weight(values)


def _first_is_foldable(ops, axis: int, bare_matmul: bool = False) -> bool:
    """Whether the first op the chain writes is a constant affine on the feature axis that folds away
    (written by hand from the chain's construction: BN is written on axis 1 only; after a MatMul
    without a bias, an Add *is* the bias, and a Sub or a BN's shift becomes one, so none removes a node)."""
    written = [op for op in ops if not (op == "bn" and axis != 1)]
    if not written or written[0] == "relu":
        return False
    return not (bare_matmul and written[0] in ("add", "sub", "bn"))


def _post_chain(b: GraphBuilder, y: str, ops, rng, channels: int, rank: int, axis: int) -> str:
    for op in ops:
        if op == "bn":
            if axis != 1:
                continue  # BN normalizes axis 1 only
            y = b.batchnorm(y, channels, rng)
        elif op == "relu":
            y = b.node("Relu", [y])
        else:
            name = {"mul": "Mul", "add": "Add", "sub": "Sub", "div": "Div"}[op]
            y = b.node(name, [y, _channel_const(b, rng, channels, rank, axis, positive=op in ("mul", "div"))])
    return y


def _ws(b: GraphBuilder, w: str, rank: int) -> str:
    """Weight standardization written out: (w - mean) / sqrt(var + eps) per output filter."""
    axes = list(range(1, rank))
    d = b.node("Sub", [w, reduce_mean(b, w, axes)])
    var = reduce_mean(b, b.node("Mul", [d, d]), axes)
    return b.node("Div", [d, b.node("Sqrt", [b.node("Add", [var, b.const(np.array(1e-5, b.dtype))])])])


@st.composite
def conv_models(draw):
    dims = draw(st.integers(1, 3))
    transposed = draw(st.booleans())
    group = draw(st.sampled_from([1, 1, 2, 3]))
    cin = group * draw(st.integers(1, 3))
    cout = group * draw(st.integers(1, 3))
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, 1)) if k > 1 else 0
    dilation = draw(st.integers(1, 2)) if k > 1 and not transposed else 1
    size = draw(st.integers(k * dilation + 1, k * dilation + 4))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float16]))
    opset = draw(st.sampled_from([13, 17, 18]))
    bias = draw(st.booleans())
    pre_bn = draw(st.booleans()) and not transposed
    ws = draw(st.booleans()) and not transposed
    post = draw(st.lists(st.sampled_from(POST_OPS), max_size=3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))

    b = GraphBuilder(opset=opset, dtype=dtype)
    x = b.input("x", [draw(st.integers(1, 2)), cin] + [size] * dims)
    if pre_bn:
        x = b.batchnorm(x, cin, rng)
    shape = (cin, cout // group) if transposed else (cout, cin // group)
    w = b.weight(rng.standard_normal(shape + (k,) * dims) * 0.5)
    if ws:
        w = _ws(b, w, dims + 2)
    attrs = {"group": group, "strides": [stride] * dims, "pads": [pad] * 2 * dims}
    if not transposed:
        attrs["dilations"] = [dilation] * dims
    ins = [x, w] + ([b.weight(rng.standard_normal(cout) * 0.1)] if bias else [])
    y = b.node("ConvTranspose" if transposed else "Conv", ins, **attrs)
    b.output(_post_chain(b, y, post, rng, cout, dims + 2, 1))
    return b.model(), dtype == np.float32 and _first_is_foldable(post, 1)


@st.composite
def linear_models(draw):
    kind = draw(st.sampled_from(["gemm", "matmul"]))
    k, n = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    m = draw(st.integers(1, 4))
    rank = 2 if kind == "gemm" else draw(st.integers(2, 3))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float16]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    b = GraphBuilder(opset=draw(st.sampled_from([13, 17])), dtype=dtype)
    shape = [m, k] if rank == 2 else [2, m, k]
    trans_a = kind == "gemm" and draw(st.booleans())
    x = b.input("x", shape[::-1] if trans_a else shape)
    if rank == 2 and not trans_a and draw(st.booleans()):
        x = b.batchnorm(x, k, rng)
    if kind == "gemm":
        trans_b = draw(st.booleans())
        c_shape = draw(st.sampled_from([None, (n,), (1, n), (m, n), ()]))
        ins = [x, b.weight(rng.standard_normal((n, k) if trans_b else (k, n)))]
        if c_shape is not None:
            ins.append(b.weight(rng.standard_normal(c_shape)))
        y = b.node(
            "Gemm",
            ins,
            transA=int(trans_a),
            transB=int(trans_b),
            alpha=draw(st.sampled_from([1.0, 0.5, 2.0])),
            beta=draw(st.sampled_from([1.0, 0.25])),
        )
    bare_matmul = False
    if kind == "matmul":
        y = b.node("MatMul", [x, b.weight(rng.standard_normal((k, n)))])
        if draw(st.booleans()):
            y = b.node("Add", [y, b.weight(rng.standard_normal(n))])
        else:
            bare_matmul = True
    post = draw(st.lists(st.sampled_from(POST_OPS), max_size=3))
    axis = 1 if rank == 2 else rank - 1
    b.output(_post_chain(b, y, post, rng, n, rank, axis))
    return b.model(), dtype == np.float32 and _first_is_foldable(post, axis, bare_matmul)


def _norm_count(model: onnx.ModelProto) -> int:
    return sum(n.op_type in ("BatchNormalization", "Mul", "Add", "Sub", "Div") for n in model.graph.node)


def _assert_fold_is_safe(case: tuple[onnx.ModelProto, bool]) -> None:
    model, must_fold = case
    out, report = fold(model, verify=True)
    onnx.checker.check_model(out, full_check=True)
    assert report.parity.passed, (report.parity.to_dict(), [n.op_type for n in model.graph.node])
    fp32 = model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    if fp32:
        assert all(o.judged_by == "gate" for o in report.parity.outputs)
    assert _norm_count(out) <= _norm_count(model)
    assert [i.name for i in out.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    if must_fold:  # the norm went into the linear op (a batched MatMul + bias may have become Reshape/Gemm/Reshape)
        computing = [n for n in out.graph.node if n.op_type != "Reshape"]
        assert len(computing) < len(model.graph.node), ([n.op_type for n in model.graph.node], report.decisions)


@SETTINGS
@given(conv_models())
def test_conv_graphs_fold_safely(case):
    _assert_fold_is_safe(case)


@SETTINGS
@given(linear_models())
def test_linear_graphs_fold_safely(case):
    _assert_fold_is_safe(case)


def test_batchnorm_statistics_generator_is_valid():
    gamma, beta, mean, var = bn_params(8, np.random.default_rng(0))
    assert (var > 0).all() and gamma.shape == beta.shape == mean.shape == (8,)


EMIT_SETTINGS = settings(SETTINGS, max_examples=60)


@st.composite
def norm_chains(draw):
    """Chains of standard normalization ops (and a Relu or Conv between), at a source opset that has them."""
    source = draw(st.sampled_from([15, 17, 18, 21, 23]))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float16]))
    channels = draw(st.sampled_from([2, 4, 6]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    b = GraphBuilder(opset=source, dtype=dtype)
    shape = [draw(st.integers(1, 2)), channels, 5, 5]  # every op of the chain keeps it
    y = b.input("x", shape)
    families = ["bn", "in", "relu", "conv"] + (["ln"] if source >= 17 else []) + (["gn"] if source >= 21 else [])
    families += ["rms"] if source >= 23 else []
    for op in draw(st.lists(st.sampled_from(families), min_size=1, max_size=4)):
        ones = np.abs(rng.standard_normal(channels)).astype(dtype) + 0.5
        zeros = (rng.standard_normal(channels) * 0.1).astype(dtype)
        if op == "bn":
            y = b.batchnorm(y, channels, rng)
        elif op == "in":
            y = b.node("InstanceNormalization", [y, b.const(ones), b.const(zeros)])
        elif op == "gn":
            y = b.node(
                "GroupNormalization", [y, b.const(ones), b.const(zeros)], num_groups=2 if channels % 2 == 0 else 1
            )
        elif op == "ln":
            last = np.abs(rng.standard_normal(5)).astype(dtype) + 0.5
            y = b.node("LayerNormalization", [y, b.const(last), b.const(np.zeros(5, dtype))], axis=-1)
        elif op == "rms":
            y = b.node("RMSNormalization", [y, b.const(np.abs(rng.standard_normal(5)).astype(dtype) + 0.5)], axis=-1)
        elif op == "relu":
            y = b.node("Relu", [y])
        else:
            y = b.conv(y, channels, channels, rng, pads=[1, 1, 1, 1])
    b.output(y, shape=shape)
    target = draw(st.integers(11, onnx.defs.onnx_opset_version()))
    style = draw(st.sampled_from(["auto", "op", "decomposed"]))
    return b.model(), target, style


@EMIT_SETTINGS
@given(norm_chains())
def test_emit_at_any_opset_and_style_keeps_parity_or_refuses_in_one_line(case):
    from normonnx.errors import UnusableInputError
    from normonnx.pipelines.emit import emit
    from normonnx.validate.verify import verify_parity

    model, target, style = case
    try:
        out, _ = emit(model, target, style)
    except UnusableInputError as e:  # an opset that cannot express the model: said, in one line
        assert "\n" not in str(e) and str(e)
        return
    onnx.checker.check_model(out, full_check=True)
    assert next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) == target
    result = verify_parity(model, out)
    assert result.passed, (target, style, [n.op_type for n in model.graph.node], result.to_dict())
