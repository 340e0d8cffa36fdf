"""normonnx bench, and the process guard around onnxruntime."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import onnx
import pytest

from normonnx.isolation import IsolatedRunError, call_isolated
from normonnx.pipelines.fold import fold
from tests.conftest import NO_MATPLOTLIB, conv_bn_model, skip_without


def test_bench_reports_a_ratio_with_its_spread(cli, tmp_path):
    ref = conv_bn_model()
    folded, _ = fold(ref)
    onnx.save(ref, tmp_path / "ref.onnx")
    onnx.save(folded, tmp_path / "folded.onnx")
    r = cli(
        "bench",
        tmp_path / "folded.onnx",
        "--vs",
        tmp_path / "ref.onnx",
        "--runs",
        "20",
        "--warmup",
        "2",
        "--json",
        "--report",
        tmp_path / "rep",
    )
    assert r.code == 0, r.err
    data = json.loads(r.out)
    sp = data["speedup"]
    assert sp["baseline"] == "ref.onnx" and sp["candidate"] == "folded.onnx"
    assert data["latency"]["folded.onnx"]["runs"] == 20 and data["latency"]["folded.onnx"]["median_ms"] > 0
    latency = json.loads((tmp_path / "rep" / "report.json").read_text())["bench"]["latency"]
    ref_ms, cand_ms = (np.asarray(latency[k]["times_ms"]) for k in ("ref.onnx", "folded.onnx"))
    assert len(ref_ms) == len(cand_ms) == 20
    # The speed-up is the spread of per-round ratios (interleaved rounds), recomputed here from the raw times.
    ratios = ref_ms / cand_ms
    assert sp["median"] == pytest.approx(np.median(ratios), rel=1e-9)
    assert (sp["p10"], sp["p90"]) == pytest.approx((np.percentile(ratios, 10), np.percentile(ratios, 90)), rel=1e-9)
    skip_without("matplotlib", NO_MATPLOTLIB)
    assert (tmp_path / "rep" / "latency.png").exists()


def test_bench_single_model_text(cli, tmp_path):
    onnx.save(conv_bn_model(), tmp_path / "m.onnx")
    r = cli("bench", tmp_path / "m.onnx", "--runs", "5", "--warmup", "1")
    assert r.code == 0 and "median ms" in r.out and "speed-up" not in r.out


def test_a_crash_in_the_child_is_reported_not_inherited():
    with pytest.raises(IsolatedRunError, match="died \\(SIGABRT\\)"):
        call_isolated(os.abort, label="crashing model")


def test_a_hang_is_stopped_by_the_timeout():
    start = time.perf_counter()
    with pytest.raises(IsolatedRunError, match="no answer within 1 s"):
        call_isolated(time.sleep, 30, label="hanging model", timeout=1)
    assert time.perf_counter() - start < 10


def test_an_exception_in_the_child_keeps_its_message():
    with pytest.raises(IsolatedRunError, match="ValueError: invalid literal"):
        call_isolated(int, "x", label="bad call")


def test_bench_times_a_dynamic_batch_at_batch_1_and_says_where_it_ran(cli, tmp_path):
    """A deployment latency is batch 1 (verification keeps batch 2 first, to catch a mixed-up batch axis)."""
    import json

    from tests.conftest import conv_bn_model

    model = conv_bn_model()
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    path = tmp_path / "dynamic.onnx"
    onnx.save(model, path)
    r = cli("bench", path, "--runs", 5, "--warmup", 1, "--json")
    report = json.loads(r.out)
    assert r.code == 0 and report["input_shapes"]["input"][0] == 1
    r = cli("bench", path, "--runs", 5, "--warmup", 1)
    assert "on cpu, onnxruntime's default threads (" in r.out and "input 1x" in r.out


def test_a_spread_too_wide_to_trust_is_flagged_with_what_to_do():
    from normonnx.pipelines.bench import untrusted_spread
    from normonnx.results import BenchReport, LatencyStats, Speedup

    def stats(p10, p90):
        return LatencyStats("m", 100, (p10 + p90) / 2, p10, p90, (p10 + p90) / 2, 1.0, [])

    steady = BenchReport({"a": "a"}, "cpu", None, {"a": stats(1.0, 1.2)})
    assert untrusted_spread(steady) == []
    noisy = BenchReport({"a": "a", "b": "b"}, "cpu", None, {"a": stats(1.0, 1.2), "b": stats(1.0, 1.2)})
    noisy.speedup = Speedup("b", "a", 0.978, 0.088, 21.06)  # what the issue saw
    (note,) = untrusted_spread(noisy)
    assert "too wide to trust" in note and "p10 0.088" in note and "--threads 1" in note and "--runs" in note
    busy = BenchReport({"a": "a"}, "cpu", None, {"a": stats(1.0, 3.0)})
    assert "a p90/p10 3.0" in untrusted_spread(busy)[0]


def test_a_submitted_call_runs_in_the_worker_while_the_caller_works_and_frees_it_after():
    """submit_to_shared_worker returns once the call is sent: the worker sleeps while this process does
    its own work; another thread's call waits for the answer to be read, then runs."""
    import threading

    from normonnx.isolation import call_in_shared_worker, submit_to_shared_worker

    call_in_shared_worker(int, "1", label="warm-up")
    start = time.perf_counter()
    pending = submit_to_shared_worker(time.sleep, 0.5, label="sleep")
    here = time.perf_counter()
    time.sleep(0.5)  # this process's own work, done while the worker sleeps
    other: list[float] = []
    waiter = threading.Thread(target=lambda: other.append(call_in_shared_worker(time.perf_counter, label="next")))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # the worker is held until the pending answer is read
    pending.result()
    waiter.join(10)
    assert here - start < 0.3 and time.perf_counter() - start < 0.95  # the two half-seconds overlapped
    assert other and not waiter.is_alive()


def test_a_submitted_call_that_raises_raises_on_result_and_frees_the_worker():
    from normonnx.isolation import call_in_shared_worker, submit_to_shared_worker

    pending = submit_to_shared_worker(int, "x", label="bad call")
    with pytest.raises(IsolatedRunError, match="bad call: ValueError: invalid literal"):
        pending.result()
    assert call_in_shared_worker(int, "7", label="next") == 7


def test_a_background_call_overlaps_the_caller_and_answers_every_time_it_is_asked():
    import threading

    from normonnx.isolation import in_background

    release = threading.Event()
    done = in_background(lambda: release.wait(5) and 42, name="test-background")
    release.set()  # the call was waiting on this thread: it ran beside it
    assert done.result() == 42 and done.result() == 42

    def fail():
        raise ValueError("from the thread")

    failed = in_background(fail, name="test-background")
    for _ in range(2):  # raised in the caller's thread, each time the outcome is asked for
        with pytest.raises(ValueError, match="from the thread"):
            failed.result()
