"""One transform, end to end: a file is served from exactly the pixels it was trained on.

Awkward but valid encodings of photos (every format and mode the data job accepts, orientation
in every container that carries it, tiny and large images) go through `happysad build` with a
non-default resize policy; a model is trained on the dataset and exported. For every accepted
file, the dataset's stored example equals THE transform of its raw bytes, and the exported
`serving_default` answers for the raw bytes exactly what `predict_images` answers for the
stored example. Every file the data job refuses for its content is answered with an error
naming the same reason.
"""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image, PngImagePlugin

from pipeline import config, contract
from pipeline.data import build, job, transform
from pipeline.export import saved_model
from pipeline.train import trainer
from tests.support import image_files

POLICY = "pad"  # not the default: the export must take it from the dataset
CONTENT_REASONS = ("not_an_image", "unsupported_format", "corrupt", "too_small", "too_large")


def _save(picture: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, image_format, **options)
    return buffer.getvalue()


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def encodings() -> dict[str, bytes]:
    """Every accepted kind of file, made from photo-like pictures (file name -> bytes)."""
    picture = Image.fromarray(image_files.photo(120, 90, seed=31))
    alpha = picture.convert("RGBA")
    alpha.putalpha(Image.linear_gradient("L").resize(picture.size))
    transparent = picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    transparent.info["transparency"] = 0
    png_exif = PngImagePlugin.PngInfo()
    png_exif.add(b"eXIf", _exif(6))
    large = Image.fromarray(image_files.photo(1800, 1350, seed=32))
    return {
        "palette.png": _save(picture.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "bilevel.png": _save(picture.convert("1"), "PNG"),
        "gray_alpha.png": _save(alpha.convert("LA"), "PNG"),
        "rgba.png": _save(alpha, "PNG"),
        "sixteen.png": _save(
            Image.fromarray(np.asarray(picture.convert("L"), np.uint16) * 257), "PNG"
        ),
        "exif6.png": _save(picture, "PNG", pnginfo=png_exif),
        "transparent.gif": _save(transparent, "GIF", transparency=0),
        "palette.bmp": _save(picture.convert("P", palette=Image.Palette.ADAPTIVE), "BMP"),
        "rgba.bmp": _save(alpha, "BMP"),
        "lossy.webp": _save(picture, "WEBP", quality=80),
        "lossless_alpha.webp": _save(alpha, "WEBP", lossless=True),
        "exif3.webp": _save(picture, "WEBP", exif=_exif(3)),
        "gray.jpg": _save(picture.convert("L"), "JPEG"),
        "cmyk.jpg": _save(picture.convert("CMYK"), "JPEG"),
        "progressive_exif8.jpg": _save(picture, "JPEG", progressive=True, exif=_exif(8)),
        "smallest.png": _save(picture.resize((40, 32)), "PNG"),  # the minimum side
        "large.jpg": _save(large, "JPEG", quality=85),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_transform")
    photos = root / "photos"
    files = {}
    for index, (name, data) in enumerate(encodings().items()):
        files[f"{contract.LABELS[index % 2]}/{name}"] = data
    for path, (data, _, reason) in image_files.awkward_files().items():
        if reason in CONTENT_REASONS:
            files[path] = data
    image_files.write_files(str(photos), files)
    image_files.write_dataset_faces(str(photos), per_label=6, seed=3)
    cfg = config.replace(
        config.seed(),
        **{
            "data.input": str(photos),
            "data.transform.resize_policy": POLICY,
            "train.epochs": 1,
            "train.batch_size": 8,
            "train.xla": "off",
            "train.model.filters": 4,
            "train.model.dense_units": 8,
        },
    )
    dataset = build.run(cfg, data_dir=str(root / "tfds"))
    name = f"{dataset['name']}/{dataset['config']}"
    trainer.run(cfg, output_dir=str(root / "train"), dataset=name, data_dir=dataset["data_dir"])
    exported = saved_model.run(
        config.replace(cfg, **{"export.warmup_images": 0}),
        model_path=str(root / "train"),
        export_base=str(root / "export"),
    )
    rows = job.read_manifest(dataset["dataset_dir"])
    stored = {}
    builder = tfds.builder_from_directory(dataset["dataset_dir"])
    for split in builder.info.splits:
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            stored[example["image/sha256"].decode()] = example["image"]
    served = tf.saved_model.load(exported["path"]).signatures
    return {"rows": rows, "stored": stored, "served": served, "photos": str(photos)}


def _bytes(photos: str, path: str) -> bytes:
    with open(path if os.path.isabs(path) else os.path.join(photos, path), "rb") as handle:
        return handle.read()


def test_every_accepted_kind_is_stored_as_the_transform_of_its_bytes(built):
    options = config.TransformConfig(resize_policy=POLICY)
    accepted = [row for row in built["rows"] if row["status"] == "accepted"]
    names = {os.path.basename(row["path"]) for row in accepted}
    assert set(encodings()) <= names  # every kind is accepted
    for row in accepted:
        data = _bytes(built["photos"], row["path"])
        expected = transform.transform(data, options).numpy()
        np.testing.assert_array_equal(built["stored"][row["sha256"]], expected, err_msg=row["path"])


def test_the_served_answer_for_the_bytes_is_the_models_on_the_stored_example(built):
    accepted = [row for row in built["rows"] if row["status"] == "accepted"]
    raw = [_bytes(built["photos"], row["path"]) for row in accepted]
    stored = np.stack([built["stored"][row["sha256"]] for row in accepted]).astype(np.float32)
    from_bytes = built["served"][contract.SERVING_SIGNATURE](image_bytes=tf.constant(raw))
    from_pixels = built["served"][contract.IMAGES_SIGNATURE](images=tf.constant(stored))
    np.testing.assert_allclose(
        from_bytes[contract.PROBABILITY_OUTPUT].numpy(),
        from_pixels[contract.PROBABILITY_OUTPUT].numpy(),
        atol=1e-6,
    )
    assert np.ptp(from_pixels[contract.PROBABILITY_OUTPUT].numpy()) > 0  # it tells them apart


def test_a_file_refused_for_its_content_is_refused_by_the_served_model_with_its_reason(built):
    refused = [row for row in built["rows"] if row["reason"] in CONTENT_REASONS]
    assert {row["reason"] for row in refused} == set(CONTENT_REASONS)
    serve = built["served"][contract.SERVING_SIGNATURE]
    for row in refused:
        data = _bytes(built["photos"], row["path"])
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            serve(image_bytes=tf.constant([data]))
        if row["reason"] != "corrupt":  # a damaged file: the decoder's own words
            assert row["reason"] in error.value.message, (row["path"], error.value.message[:200])
