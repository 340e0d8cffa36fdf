"""int8: onnxruntime's quantizer driven, its calibration data, and what its CPU kernels run in int8."""

CALIBRATIONS = ("minmax", "entropy", "percentile")
ACTIVATIONS = ("uint8", "int8")
