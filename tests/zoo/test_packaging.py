"""pyproject.toml lists the packages by hand (the zoo lives in models/ and ships as normonnx.zoo, which
packages.find cannot express), so a new subpackage left off the list would silently be missing from the
wheel: this checks the list against the folders, without building anything."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed_and_the_zoo_comes_from_models():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "normonnx").rglob("__init__.py")}
    # a leftover normonnx/zoo/ folder (even one holding only __pycache__) would shadow models/ in an editable install
    assert not (ROOT / "normonnx" / "zoo").exists(), "remove normonnx/zoo/: the zoo lives in models/"
    listed, wanted = set(SETUPTOOLS["packages"]), found | {"normonnx.zoo", "normonnx.zoo.checkpoints"}
    assert listed == wanted, f"pyproject.toml's packages: add {sorted(wanted - listed)}, drop {sorted(listed - wanted)}"
    assert SETUPTOOLS["package-dir"] == {"normonnx.zoo": "models"}
    assert (ROOT / "models" / "__init__.py").is_file() and (ROOT / "models" / "data.py").is_file()


def test_every_checkpoint_is_package_data():
    patterns = SETUPTOOLS["package-data"]["normonnx.zoo.checkpoints"]
    files = sorted((ROOT / "models" / "checkpoints").iterdir())
    assert files and all(any(f.match(p) for p in patterns) for f in files), [f.name for f in files]
    weights = {f.stem for f in files if f.suffix == ".safetensors"}
    assert weights == {f.stem for f in files if f.suffix == ".json"}
