"""Verification shapes found from the model (validate.probe): originals that break at a default size run.

Each model here is built so that the old fixed guess (batch 2, every other dynamic dim 16) breaks
the *original*, the way real files do; the sizes that work are known from the construction.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from normonnx.errors import UnusableInputError
from normonnx.validate.inputs import input_specs
from normonnx.validate.probe import candidates, compared_constants, probe_shapes, total_strides
from normonnx.validate.runners import IsolatedRunner
from tests.builders import GraphBuilder, run_model
from tests.helpers import rng


def stride32_neck() -> onnx.ModelProto:
    """Five stride-2 convs, the deepest map upsampled x2 and concatenated with the stride-16 one (a YOLO neck):
    the sides must be multiples of 32, so 16 breaks it and 64 runs."""
    r = rng()
    b = GraphBuilder(opset=17)
    y = b.input("images", ["batch", 3, "height", "width"])
    levels = []
    cin = 3
    for _ in range(5):
        y = b.conv(y, cin, 4, r, pads=[1, 1, 1, 1], strides=[2, 2])
        levels.append(y)
        cin = 4
    up = b.node("Resize", [levels[4], "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    y = b.node("Concat", [up, levels[3]], axis=1)
    b.output(y)
    return b.model()


def reflect_padded_signal() -> onnx.ModelProto:
    """A reflect Pad of 64 samples on each side (an STFT front end): the signal must be longer than 64."""
    b = GraphBuilder(opset=17)
    x = b.input("audio", ["batch", "samples"])
    y = b.node("Pad", [x, b.const(np.array([0, 64, 0, 64], np.int64))], mode="reflect")
    b.output(y)
    return b.model()


def sample_rate_branch() -> onnx.ModelProto:
    """An If on ``sr == 16000`` whose else branch fails at run time (silero's sample-rate check)."""
    then = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)],
    )
    bad_shape = helper.make_tensor("bad", TensorProto.INT64, [1], [7])
    other = helper.make_graph(
        [
            helper.make_node("Constant", [], ["s"], value=bad_shape),
            helper.make_node("Reshape", ["x", "s"], ["e_out"]),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)],
    )
    b = GraphBuilder(opset=17)
    b.input("x", [1, 4])
    b.input("sr", [], dtype=np.int64)
    cond = b.node("Equal", ["sr", b.const(np.array(16000, np.int64))])
    b.node("If", [cond], outputs=["y"], then_branch=then, else_branch=other)
    b.output("y", shape=[1, 4])
    return b.model()


def test_stride32_neck_breaks_at_the_old_default_and_runs_at_a_probed_multiple_of_32():
    model = stride32_neck()
    assert total_strides(model) == (32, 32)
    probed = probe_shapes(model, IsolatedRunner(model.SerializeToString(), label="neck"))
    side = probed.shapes["images"][2]
    assert side % 32 == 0 and probed.shapes["images"][3] == side
    assert probed.guessed == ["images"] and "(guessed)" in probed.describe()
    # The old guess (16) does break the original: the probe is not just lucky.
    with pytest.raises(Exception, match=r"Concat|dimension|shape"):
        run_model(model, {"images": np.zeros((2, 3, 16, 16), np.float32)})


def test_reflect_pad_gets_a_signal_longer_than_the_pad():
    model = reflect_padded_signal()
    probed = probe_shapes(model, IsolatedRunner(model.SerializeToString(), label="stft"))
    assert probed.shapes["audio"][1] > 64


def test_an_integer_scalar_compared_with_a_constant_takes_that_value():
    model = sample_rate_branch()
    assert compared_constants(model, input_specs(model)) == {"sr": 16000}
    probed = probe_shapes(model, IsolatedRunner(model.SerializeToString(), label="vad"))
    assert probed.values == {"sr": 16000} and "sr=16000" in probed.describe()


def test_dims_sharing_a_name_share_a_size_and_unnamed_state_dims_follow_the_batch():
    b = GraphBuilder(opset=17)
    b.input("a", ["batch", "seq"])
    b.input("mask", ["batch", "seq"])
    b.input("state", [2, None, 8])
    b.node("Identity", ["a"], outputs=["y"])
    b.output("y", shape=["batch", "seq"])
    specs = input_specs(b.model())
    for shapes in candidates(specs, {}):
        assert shapes["a"] == shapes["mask"]
        assert shapes["state"][1] == shapes["a"][0]  # a state's open dim is a batch
    assert {s["a"][0] for s in candidates(specs, {})} == {2, 1}


def test_per_axis_strides_of_a_text_recognizer():
    r = rng()
    b = GraphBuilder(opset=17)
    y = b.input("x", ["n", 3, "h", "w"])
    for _ in range(3):
        y = b.conv(y, 3, 3, r, pads=[1, 1, 1, 1], strides=[2, 1])
    b.output(y)
    assert total_strides(b.model()) == (8, 1)


def test_named_shapes_are_not_guessed_and_nothing_is_run_for_them():
    model = stride32_neck()
    probed = probe_shapes(model, None, {"images": (1, 3, 96, 96)})
    assert probed.shapes == {"images": (1, 3, 96, 96)} and probed.guessed == [] and probed.tried == 0


def test_a_model_no_shape_runs_says_what_was_tried_and_what_to_pass():
    b = GraphBuilder(opset=17)
    x = b.input("x", ["batch", 5])
    y = b.node("Reshape", [x, b.const(np.array([7, -1], np.int64))])  # never divisible
    b.output(y)
    model = b.model()
    with pytest.raises(UnusableInputError) as info:
        probe_shapes(model, IsolatedRunner(model.SerializeToString(), label="m.onnx"))
    message = str(info.value)
    assert "\n" not in message and "m.onnx" in message and "x:2,5" in message and "x:1,5" in message
    assert "--shape x:" in message


def test_fold_with_no_options_verifies_a_model_the_old_default_broke(tmp_path, cli):
    src, out = tmp_path / "neck.onnx", tmp_path / "neck.folded.onnx"
    onnx.save(stride32_neck(), src)
    result = cli("fold", src, "-o", out)
    assert result.code == 0, result.err
    assert "(guessed)" in result.out and out.is_file()
    check = cli("check", out, "--against", src)
    assert check.code == 0 and "(guessed)" in check.out
    bench = cli("bench", src, "--runs", "2", "--warmup", "0")
    assert bench.code == 0 and "(dynamic sizes chosen by normonnx" in bench.out


def test_check_says_so_when_no_guess_runs(tmp_path, cli):
    b = GraphBuilder(opset=17)
    x = b.input("x", ["batch", 5])
    y = b.node("Reshape", [x, b.const(np.array([7, -1], np.int64))])
    b.output(y)
    src = tmp_path / "bad.onnx"
    onnx.save(b.model(), src)
    result = cli("check", src, "--against", src)
    assert result.code == 2
    assert result.err.count("\n") == 1 and "--shape x:" in result.err and "Traceback" not in result.err


def test_token_ids_that_overrun_a_small_embedding_table_are_tried_as_zeros():
    """A BERT's segment embedding has 2 rows: seeded ids in [0, 8) overrun it, ids 0 do not."""
    b = GraphBuilder(opset=17)
    ids = b.input("token_type_ids", ["batch", "seq"], dtype=np.int64)
    y = b.node("Gather", [b.const(np.ones((2, 4), np.float32)), ids])
    b.output(y)
    model = b.model()
    probed = probe_shapes(model, IsolatedRunner(model.SerializeToString(), label="bert"))
    assert probed.zero_integers and "integer inputs 0" in probed.describe()
