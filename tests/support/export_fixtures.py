"""Test data for the export, evaluate and push tests: photo-like images and tiny Keras models.

The images have what real photos have and flat test patterns lack (smooth gradients, fine
noise, soft-edged shapes, odd sizes and aspect ratios, JPEG artefacts, EXIF rotation, alpha),
so a resize or decode that differs from THE transform shows up in the predictions.
"""

import io

import keras
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 256


def photo_like(seed: int, height: int, width: int) -> np.ndarray:
    """uint8 RGB (height, width, 3): gradient, blotches, a face-like ellipse, shapes, noise."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:height, :width] / max(height, width)
    corners = rng.uniform(0, 255, (2, 2, 3))
    background = (
        corners[0, 0] * (1 - rows[..., None]) * (1 - columns[..., None])
        + corners[0, 1] * (1 - rows[..., None]) * columns[..., None]
        + corners[1, 0] * rows[..., None] * (1 - columns[..., None])
        + corners[1, 1] * rows[..., None] * columns[..., None]
    )
    picture = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(6):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.05, 0.3) * min(height, width)
        colour = tuple(int(value) for value in rng.integers(0, 256, 3))
        box = (x - radius, y - radius * rng.uniform(0.5, 1.5), x + radius, y + radius)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    face = (width * 0.3, height * 0.2, width * 0.7, height * 0.85)
    draw.ellipse(face, fill=(224, 172, 130))
    for eye_x in (0.42, 0.58):
        draw.ellipse(
            (width * eye_x - 4, height * 0.42 - 3, width * eye_x + 4, height * 0.42 + 3),
            fill=(30, 20, 10),
        )
    draw.arc(
        (width * 0.4, height * 0.55, width * 0.6, height * 0.72),
        20,
        160,
        fill=(120, 30, 30),
        width=3,
    )
    picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    pixels = np.asarray(picture).astype(np.float32) + rng.normal(0, 6, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, image_format: str, mode: str = "RGB", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _with_alpha(image: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    alpha = np.full((height, width), 255, np.uint8)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    alpha[top : top + height // 3, left : left + width // 3] = 0
    alpha[:, : width // 6] = 128
    return np.dstack([image, alpha])


def encoded_samples() -> dict[str, bytes]:
    """Encoded photo-like images of many sizes and kinds, by a descriptive name."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees, as phone cameras write it
    return {
        "jpeg_250x250": encode(photo_like(1, 250, 250), "JPEG", quality=92),
        "jpeg_480x640": encode(photo_like(2, 480, 640), "JPEG", quality=75),
        "jpeg_exif_rotated_240x320": encode(
            photo_like(3, 240, 320), "JPEG", quality=90, exif=exif.tobytes()
        ),
        "png_320x180": encode(photo_like(4, 320, 180), "PNG"),
        "png_256x256": encode(photo_like(5, 256, 256), "PNG"),
        "grayscale_jpeg_131x97": encode(photo_like(6, 131, 97), "JPEG", "L", quality=85),
        "grayscale_png_200x300": encode(photo_like(7, 200, 300), "PNG", "L"),
        "rgba_png_300x300": encode(_with_alpha(photo_like(8, 300, 300), 8), "PNG", "RGBA"),
        "grayscale_alpha_png_150x200": encode(_with_alpha(photo_like(9, 150, 200), 9), "PNG", "LA"),
        "palette_png_transparent_260x240": _palette_png(photo_like(10, 260, 240)),
    }


def _palette_png(image: np.ndarray) -> bytes:
    """A 64-colour palette PNG whose first colour is transparent (tRNS), as GIF-era files are."""
    buffer = io.BytesIO()
    picture = Image.fromarray(image).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    picture.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


def spatial_model(calibration: np.ndarray, seed: int = 0) -> keras.Model:
    """A small CNN that looks at where things are, its output spread over (0, 1).

    Flattened pooled features (rather than a global average) make it sensitive to layout, so a
    missed EXIF rotation or a shifted resize changes its answer. The last layer is calibrated
    on `calibration` (uint8 images) so that the logits there have a spread of about 2.5.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    features = keras.layers.Conv2D(4, 5, strides=4, activation="tanh")(inputs)
    features = keras.layers.AveragePooling2D(8)(features)
    features = keras.layers.Flatten()(features)
    extractor = keras.Model(inputs, features)
    values = extractor.predict(calibration.astype(np.float32) / 255.0, verbose=0)
    weights = np.random.default_rng(seed).normal(size=(values.shape[1], 1))
    logits = (values - values.mean(axis=0)) @ weights
    weights *= 2.5 / max(float(logits.std()), 1e-6)
    head = keras.layers.Dense(1, activation="sigmoid")
    outputs = head(features)
    head.set_weights(
        [weights.astype(np.float32), -(values.mean(axis=0) @ weights).astype(np.float32)]
    )
    return keras.Model(inputs, outputs)


def brightness_model(direction: float = 1.0, offset: float = 0.0) -> keras.Model:
    """P(happy) rising with mean brightness (falling if `direction` < 0): tiny_tfds' rule.

    `offset` shifts the logit, to make a deliberately miscalibrated (worse) model.
    """
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    head = keras.layers.Dense(1, activation="sigmoid")
    outputs = head(mean)
    head.set_weights(
        [
            np.full((3, 1), direction * 20.0 / 3, np.float32),
            np.array([-direction * 10.0 + offset], np.float32),
        ]
    )
    return keras.Model(inputs, outputs)
