"""The torch front end: factories, checkpoints, torch's exporters, and the modules torch lacks.

Only ``export``, ``convert`` and ``check --torch`` come here, and torch is
imported only inside these modules (the ``export`` extra). ``fold``,
``emit``, ``inspect``, ``check`` and ``bench`` never import torch.
"""

from __future__ import annotations

from normonnx.errors import RuntimeUnavailableError

# pyproject.toml's export extra, by import name: when one of these is what fails to import, the fix is the extra.
EXPORT_EXTRA = ("torch", "onnxscript", "safetensors")


def export_extra_missing(package: str, context: str = "") -> RuntimeUnavailableError:
    """The one-line error for a package of the export extra that is not installed, naming what to install."""
    return RuntimeUnavailableError(
        f"{context}{package} is not installed; this command needs the export extra: pip install 'normonnx[export]'"
    )


def missing_export_package(error: BaseException) -> str | None:
    """The package of the export extra whose absence raised ``error`` (or an error it was raised from), else None.

    Only the package itself counts: a submodule missing from an installed torch is a broken or mismatched
    install, which reinstalling the extra's pin would not explain.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ModuleNotFoundError) and current.name in EXPORT_EXTRA:
            return current.name
        current = current.__cause__ or current.__context__
    return None


def require_torch():
    """torch, or a one-line error that says which extra to install."""
    try:
        import torch
    except ImportError:
        raise export_extra_missing("torch") from None
    return torch
