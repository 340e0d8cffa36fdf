"""The ``normonnx`` command line (contract: DESIGN.md section 6).

Every subcommand returns an exit code: 0 success, 1 verification failure,
2 unusable input. A user error is one line on stderr, never a traceback;
``--debug`` shows the traceback of an unexpected error. ``main.py`` holds
the parser and the error boundary, ``commands.py`` one handler per
subcommand, ``many.py`` the many-file forms, ``options.py`` the shared
options, ``output.py`` what goes to stdout and stderr.
"""

from __future__ import annotations

from normonnx.cli.main import EXIT_INTERNAL, build_parser, main, run

__all__ = ["EXIT_INTERNAL", "build_parser", "main", "run"]
