"""Without the export extra, a command that needs torch (or onnxscript, safetensors) fails in one line that
says what to install, not with the bare import error of the user's module.

The packages are made absent in a fresh process by a meta path finder, so these run whether or not the
extra is installed here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from normonnx.torchfront import missing_export_package

INSTALL = "this command needs the export extra: pip install 'normonnx[export]'"
WITHOUT = """\
import sys

ABSENT = set(filter(None, sys.argv.pop(1).split(",")))


class Absent:
    \"\"\"The named packages look uninstalled, as they are without normonnx's export extra.\"\"\"

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Absent)
from normonnx.cli import main

sys.exit(main())
"""


def _normonnx_without(absent: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = cwd / "without.py"
    script.write_text(WITHOUT)
    return subprocess.run(
        [sys.executable, str(script), absent, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("absent", "imports"),
    [("torch", "import torch\nfrom torch import nn"), ("onnxscript", "import onnxscript"),
     ("safetensors", "from safetensors.torch import load_file")],
)  # fmt: skip
def test_a_user_module_that_imports_a_package_of_the_extra_names_the_extra(tmp_path, absent, imports):
    (tmp_path / "mymod.py").write_text(f"{imports}\n\n\ndef build():\n    return None\n")
    r = _normonnx_without(absent, "export", "mymod:build", "-o", "o.onnx", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"normonnx: error: 'mymod:build': cannot import mymod: {absent} is not installed; {INSTALL}"
    ]
    assert not (tmp_path / "o.onnx").exists()


def test_the_zoo_and_the_demo_without_torch_name_the_extra(tmp_path):
    r = _normonnx_without("torch", "export", "normonnx.zoo:resnet_bn", "-o", "o.onnx", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"normonnx: error: 'normonnx.zoo:resnet_bn': cannot import normonnx.zoo: torch is not installed; {INSTALL}"
    ], r.stderr
    r = _normonnx_without("torch", "demo", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"normonnx: error: torch is not installed; {INSTALL}"]


def test_a_module_missing_for_another_reason_keeps_its_own_message(tmp_path):
    (tmp_path / "mymod.py").write_text("import no_such_pkg\n")
    r = _normonnx_without("", "export", "mymod:build", "-o", "o.onnx", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "normonnx: error: 'mymod:build': cannot import mymod (ModuleNotFoundError: No module named 'no_such_pkg')"
    ]


def test_only_the_extras_own_packages_count_and_the_chain_is_followed():
    assert missing_export_package(ModuleNotFoundError("No module named 'torch'", name="torch")) == "torch"
    # a submodule missing from an installed torch is a broken install, not a missing extra
    assert missing_export_package(ModuleNotFoundError("No module named 'torch._C'", name="torch._C")) is None
    assert missing_export_package(ModuleNotFoundError("No module named 'timm'", name="timm")) is None
    assert missing_export_package(ValueError("no")) is None
    try:
        try:
            raise ModuleNotFoundError("No module named 'onnxscript'", name="onnxscript")
        except ImportError as e:
            raise RuntimeError("the dynamo exporter needs onnxscript") from e
    except RuntimeError as wrapped:
        assert missing_export_package(wrapped) == "onnxscript"
