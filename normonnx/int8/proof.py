"""The proof of an int8 model: how it does against its float32 model on held-out feeds, as onnxruntime deploys it.

Accuracy per output (SQNR, the gate; max and mean error), top-1 agreement of classifier-shaped outputs, the
nodes that compute in float once onnxruntime has fused what it runs in int8 (and why each does), and the nodes
where the error grows most.
"""

from __future__ import annotations

import numpy as np
import onnx

from normonnx.graph.quantized import qdq_count
from normonnx.int8 import engine
from normonnx.int8.data import Int8Inputs
from normonnx.int8.kernels import NORMALIZATION_OPS, ORT_CPU_INT8
from normonnx.results import ErrorJump, FloatNode, Int8Model
from normonnx.validate.parity import Gate, compare
from normonnx.validate.runner import SessionConfig
from normonnx.validate.runners import OnnxruntimeRunner, RunOptions

DEPLOYED = SessionConfig(optimize=True)  # how an int8 model is judged: its int8 kernels need the fusions
JUMPS_SHOWN = 5


def judged(
    flow: str,
    quantized: engine.Quantized,
    refs: list[dict[str, np.ndarray]],
    inputs: Int8Inputs,
    gate: Gate,
    options: RunOptions,
    kept: dict[str, FloatNode],
    source: str,
) -> Int8Model:
    """An int8 model run as deployed on the held-out feeds and compared with the float32 model's outputs."""
    runner = options.runner(quantized.model, DEPLOYED, label=f"{source} ({flow} int8)")
    got = runner.infer(inputs.held_out)
    result = Int8Model(flow, compare(refs, got, default=gate), notes=list(quantized.notes))
    result.top1 = top1(refs, got)
    result.qdq = qdq_count(onnx.load_from_string(quantized.model))
    deployed = options.call(engine.deployed_ops, quantized.model, label=f"{source} ({flow} int8)")
    result.float_nodes = [FloatNode(n, op, why(n, op, kept)) for n, op, in_float in deployed if in_float]
    return result


def why(node: str, op: str, kept: dict[str, FloatNode]) -> str:
    """Why a node computes in float in the deployed int8 model."""
    if node in kept:
        return f"kept in float by normonnx: {kept[node].reason}"
    if op in ORT_CPU_INT8 and op not in NORMALIZATION_OPS:
        return f"its inputs are not quantized: onnxruntime runs this {op} in float"
    return f"onnxruntime's CPU provider has no int8 kernel for {op}"


def top1(refs: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Top-1 agreement of every classifier-shaped output ([N, C], C >= 2) with the float32 model."""
    agreement = {}
    for name, first in refs[0].items():
        if np.ndim(first) != 2 or np.shape(first)[1] < 2 or np.asarray(first).dtype.kind != "f":
            continue
        ref = np.concatenate([r[name].argmax(axis=1) for r in refs])
        cand = np.concatenate([g[name].argmax(axis=1) for g in got])
        agreement[name] = float(np.mean(ref == cand))
    return agreement


def error_jumps(
    model: bytes, original: onnx.ModelProto, reference: OnnxruntimeRunner, feed, options: RunOptions, source: str
) -> list[ErrorJump]:
    """The nodes where the int8 model's error grows most: each tensor's SQNR against the same tensor of the
    float32 model it was quantized from (``original``: the prepared model, whose names the QDQ model keeps),
    and the SQNR of its producer's inputs before it."""
    proto = onnx.load_from_string(model)
    ref_names = {o for n in original.graph.node for o in n.output if o}
    producers = {o: n for n in proto.graph.node for o in n.output if o}
    # What the next layer sees of a quantized tensor x is DQ(Q(x)): x itself may be a conv's output before
    # the ReLU the quantizer folded into Q's range. A node's input DQ(Q(x)) is judged as x's.
    q = {n.input[0]: n.output[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    dq = {n.input[0]: n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    seen = {x: dq.get(q[x], x) if x in q else x for x in producers if x in ref_names}
    float_of = {v: k for k, v in seen.items()}
    names = [x for x in seen if producers[x].op_type not in ("QuantizeLinear", "DequantizeLinear")]
    if not names:
        return []
    runner = options.runner(model, SessionConfig(), label=f"{source} (int8, localize)")
    pairs = [(seen[x], x) for x in names]
    results = runner.compare_intermediates(reference, feed, feed, pairs, Gate(min_sqnr=0.0))
    sqnr = {x: r.sqnr_db for x, r in zip(names, results, strict=True) if r is not None and r.sqnr_db is not None}
    inputs_of = {}
    for name in sqnr:
        before = [sqnr[i] for i in (float_of.get(x, x) for x in producers[name].input) if i in sqnr]
        if before:
            inputs_of[name] = min(before)
    ranked = sorted(inputs_of, key=lambda n: sqnr[n] - inputs_of[n])[:JUMPS_SHOWN]
    return [ErrorJump(producers[n].name, producers[n].op_type, n, inputs_of[n], sqnr[n]) for n in ranked
            if inputs_of[n] > sqnr[n]]  # fmt: skip
