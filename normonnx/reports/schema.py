"""The version of every machine-readable report normonnx writes (``--json``, report.json, summary.json).

One number for all of them: a consumer checks it once. Raise it when a field
changes meaning or disappears; adding a field keeps it.
"""

SCHEMA_VERSION = 1
