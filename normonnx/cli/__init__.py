"""The ``normonnx`` command line (contract: DESIGN.md section 6).

Every subcommand returns an exit code: 0 success, 1 verification failure,
2 unusable input. A user error is one line on stderr, never a traceback;
``--debug`` shows the traceback of an unexpected error. ``main.py`` holds
the parser (built from the verbs' descriptors) and the error boundary,
``verb.py`` the descriptor type and the one handler that runs any verb,
``commands.py`` one descriptor per subcommand, ``many.py`` the one-file or
many-file decision and the many-file forms, ``options.py`` the shared
options, ``output.py`` what goes to stdout and stderr.
"""

from __future__ import annotations

# main.py imports the verbs (and onnx) only when it parses a command line: this import is light.
from normonnx.cli.main import EXIT_INTERNAL, build_parser, main, run

__all__ = ["EXIT_INTERNAL", "build_parser", "main", "run"]
