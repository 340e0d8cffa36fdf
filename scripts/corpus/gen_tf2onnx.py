"""tf2onnx conversions of Keras models with random weights (run in the private venv that has tensorflow-cpu).

Keras initializes BatchNormalization to mean 0, variance 1, gamma 1, beta 0, which would make every fold trivial,
so all BatchNormalization and LayerNormalization parameters are redrawn from a seeded generator first.
Note: tf2onnx folds a BatchNormalization that follows a Conv into the Conv; only DenseNet's (after a Concat) stay.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from _common import Builder, run, seed_for

SIZE = 96  # small inputs keep conversion quick; the weights do not depend on it


def _randomize_norms(model: object, seed: int) -> None:
    """Redraw normalization parameters and statistics so that folding them changes the numbers."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    draw = {
        "gamma": lambda s: rng.uniform(0.5, 1.5, s),
        "beta": lambda s: rng.uniform(-0.2, 0.2, s),
        "moving_mean": lambda s: rng.normal(0.0, 0.3, s),
        "moving_variance": lambda s: rng.uniform(0.5, 2.0, s),
    }
    norms = (tf.keras.layers.BatchNormalization, tf.keras.layers.LayerNormalization)
    for layer in model.submodules:  # submodules also reaches layers nested in MultiHeadAttention and the like
        if isinstance(layer, norms):
            for var in layer.weights:
                key = var.name.split("/")[-1].split(":")[0]
                if key in draw:
                    var.assign(draw[key](tuple(var.shape)).astype(var.dtype.as_numpy_dtype))


def _convert(model: object, spec: tuple, opset: int, path: Path) -> None:
    import tf2onnx

    tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=str(path))


def keras_application(rel: str, name: str, opset: int = 13) -> Builder:
    """A keras.applications model with random weights, batch left dynamic as a deployed model would have it."""

    def build(path: Path) -> None:
        import tensorflow as tf

        tf.keras.utils.set_random_seed(seed_for(rel))
        model = getattr(tf.keras.applications, name)(weights=None, input_shape=(SIZE, SIZE, 3))
        _randomize_norms(model, seed_for(rel))
        _convert(model, (tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="input"),), opset, path)

    return build


def tiny_transformer(rel: str, opset: int = 15) -> Builder:
    """Pre-norm encoder blocks: tf2onnx lowers keras LayerNormalization through its own moments pattern."""

    def build(path: Path) -> None:
        import tensorflow as tf

        layers = tf.keras.layers
        tf.keras.utils.set_random_seed(seed_for(rel))
        tokens = tf.keras.Input((16, 32), name="tokens")
        x = layers.Dense(64)(tokens)
        for _ in range(2):
            h = layers.LayerNormalization(epsilon=1e-6)(x)
            x = layers.Add()([x, layers.MultiHeadAttention(num_heads=4, key_dim=16)(h, h)])
            h = layers.LayerNormalization(epsilon=1e-6)(x)
            x = layers.Add()([x, layers.Dense(64)(layers.Dense(128, activation="gelu")(h))])
        model = tf.keras.Model(tokens, layers.LayerNormalization()(x))
        _randomize_norms(model, seed_for(rel))
        _convert(model, (tf.TensorSpec((None, 16, 32), tf.float32, name="tokens"),), opset, path)

    return build


TARGETS = {
    "tf2onnx/keras_mobilenetv2.onnx": ("MobileNetV2",),
    "tf2onnx/keras_resnet50.onnx": ("ResNet50",),
    "tf2onnx/keras_efficientnetb0.onnx": ("EfficientNetB0",),
    "tf2onnx/keras_densenet121.onnx": ("DenseNet121",),
}

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before tensorflow is imported by a builder
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    builders: dict[str, Builder] = {rel: keras_application(rel, *a) for rel, a in TARGETS.items()}
    builders["tf2onnx/keras_tiny_transformer.onnx"] = tiny_transformer("tf2onnx/keras_tiny_transformer.onnx")
    sys.exit(run(builders))
