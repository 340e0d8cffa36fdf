"""The torch front end: factories, checkpoints, torch's exporters, and the modules torch lacks.

Only ``export``, ``convert`` and ``check --torch`` come here, and torch is
imported only inside these modules (the ``export`` extra). ``fold``,
``emit``, ``inspect``, ``check`` and ``bench`` never import torch.
"""

from __future__ import annotations

from normonnx.errors import RuntimeUnavailableError


def require_torch():
    """torch, or a one-line error that says which extra to install."""
    try:
        import torch
    except ImportError:
        raise RuntimeUnavailableError(
            "torch is not installed; this command needs the export extra: pip install 'normonnx[export]'"
        ) from None
    return torch
