"""The serving contract: signatures, in-graph preprocessing parity, assets, warm-up, versions."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import pipeline
from pipeline import artifacts, config, contract, errors
from pipeline.data import transform
from pipeline.export import saved_model as export
from serving import prediction_log
from tests.support import export_fixtures, image_files, ram_filesystem

OUTPUTS = {
    "happy_probability": (tf.float32, [-1]),
    "label": (tf.string, [-1]),
    "class_id": (tf.int64, [-1]),
}


@pytest.fixture(scope="module")
def samples():
    return export_fixtures.encoded_samples()


@pytest.fixture(scope="module")
def cleaned(samples):
    """What the data job stores for each sample: THE transform's uint8 RGB 256x256."""
    transformer = transform.Transformer(config.TransformConfig())
    images = []
    for data in samples.values():
        result = transformer(data)
        assert result.pixels is not None, result.reason
        images.append(result.pixels)
    return np.stack(images)


@pytest.fixture(scope="module")
def model(cleaned):
    return export_fixtures.spatial_model(cleaned)


@pytest.fixture(scope="module")
def expected(model, cleaned):
    """The Keras model's P(happy) on the preprocessed examples."""
    return model.predict(cleaned.astype(np.float32) / 255.0, verbose=0).reshape(-1)


@pytest.fixture(scope="module")
def threshold(expected):
    # Not 0.5, and with samples on both sides, so the served label must use the stored value.
    return float(np.round(np.median(expected), 3))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model, threshold, samples):
    export_dir = str(tmp_path_factory.mktemp("export") / "1")
    card = {"dataset": {"name": "tiny", "config": "faces", "version": "1.0.0"}, "lineage": {}}
    warmup_images = list(samples.values())[:3]
    result = export.export_model(model, export_dir, threshold, card, warmup_images)
    return result


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported["path"])


def _signature_defs(export_dir):
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as handle:
        saved_model.ParseFromString(handle.read())
    (meta_graph,) = saved_model.meta_graphs
    assert list(meta_graph.meta_info_def.tags) == ["serve"]
    return meta_graph.signature_def


def _shape(tensor_info):
    return [dim.size for dim in tensor_info.tensor_shape.dim]


def test_signature_defs_are_the_serving_contract(exported):
    signatures = _signature_defs(exported["path"])
    assert {"serving_default", "predict_images"} <= set(signatures)
    expected_inputs = {
        "serving_default": {"image_bytes": (tf.string, [-1])},
        "predict_images": {"images": (tf.float32, [-1, 256, 256, 3])},
    }
    for name, inputs in expected_inputs.items():
        signature = signatures[name]
        assert signature.method_name == "tensorflow/serving/predict"
        assert {
            key: (tf.as_dtype(info.dtype), _shape(info)) for key, info in signature.inputs.items()
        } == inputs
        assert {
            key: (tf.as_dtype(info.dtype), _shape(info)) for key, info in signature.outputs.items()
        } == OUTPUTS


def test_served_probability_matches_preprocessed_example(loaded, samples, expected):
    served = loaded.signatures["serving_default"](image_bytes=tf.constant(list(samples.values())))
    difference = np.abs(served["happy_probability"].numpy() - expected)
    # THE transform made the examples and runs in the graph: the same pixels, the same answer.
    assert difference.max() <= 1e-6, dict(zip(samples, difference.round(7), strict=True))
    # The check means something only if the model's answers differ between images.
    assert expected.max() - expected.min() > 0.3


def test_naive_preprocessing_would_break_parity(model, samples, expected):
    """The samples catch what a plain decode_image + resize gets wrong (EXIF, alpha)."""
    naive = [
        tf.image.resize(tf.io.decode_image(data, channels=3, expand_animations=False), [256, 256])
        for data in samples.values()
    ]
    probabilities = model.predict(np.stack(naive) / 255.0, verbose=0).reshape(-1)
    assert np.abs(probabilities - expected).max() > 0.02


def test_predict_images_takes_preprocessed_pixels(loaded, cleaned, expected):
    served = loaded.signatures["predict_images"](images=tf.constant(cleaned, tf.float32))
    np.testing.assert_allclose(served["happy_probability"].numpy(), expected, atol=1e-5)


def test_label_and_class_id_use_the_stored_threshold(loaded, samples, exported, threshold):
    served = loaded.signatures["serving_default"](image_bytes=tf.constant(list(samples.values())))
    probabilities = served["happy_probability"].numpy()
    happy = probabilities >= threshold
    assert 0 < happy.sum() < len(happy)
    np.testing.assert_array_equal(served["class_id"].numpy(), happy.astype(np.int64))
    assert [label.decode() for label in served["label"].numpy()] == [
        "happy" if value else "sad" for value in happy
    ]
    card = json.loads(_read(exported["path"], "assets", "model_card.json"))
    assert card["threshold"] == pytest.approx(threshold)


def test_single_image_and_empty_batches(loaded, samples, expected):
    serve = loaded.signatures["serving_default"]
    first = serve(image_bytes=tf.constant([samples["png_256x256"]]))
    index = list(samples).index("png_256x256")
    assert first["happy_probability"].shape == (1,)
    assert first["happy_probability"].numpy()[0] == pytest.approx(expected[index], abs=0.02)
    empty = serve(image_bytes=tf.constant([], tf.string))
    assert empty["happy_probability"].shape == (0,) and empty["label"].shape == (0,)


def test_bytes_that_are_not_an_image_are_refused(loaded):
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_default"](image_bytes=tf.constant([b"<html>not a face</html>"]))


def test_the_serving_graph_refuses_a_bomb_from_its_header(loaded):
    bomb = image_files.bomb_png(30_000)  # a small file whose header claims 900 megapixels
    with pytest.raises(tf.errors.InvalidArgumentError, match="too_large"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([bomb]))


def _read(*parts, mode="r"):
    with open(os.path.join(*parts), mode) as handle:
        return handle.read()


def test_assets_labels_and_model_card(exported):
    assert _read(exported["path"], "assets", "labels.txt").split() == ["sad", "happy"]
    card = json.loads(_read(exported["path"], "assets", "model_card.json"))
    assert card["dataset"] == {"name": "tiny", "config": "faces", "version": "1.0.0"}
    assert card["labels"] == ["sad", "happy"]
    assert set(card["signatures"]) == {"serving_default", "predict_images"}
    assert card["framework"]["tensorflow"] == tf.__version__
    assert card["created"]


def test_warmup_requests_replay_on_the_signature(exported, loaded, samples):
    logs = prediction_log.read_warmup_requests(prediction_log.warmup_path(exported["path"]))
    assert len(logs) == exported["warmup_requests"] == 4  # three single images and one batch
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        images = tf.make_ndarray(request.inputs["image_bytes"])
        assert set(images.tolist()) <= set(samples.values())
        outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
        assert outputs["happy_probability"].shape == (len(images),)


def test_fresh_process_serves_with_plain_tensorflow(exported, samples, expected):
    script = textwrap.dedent(
        """
        import json, sys
        import tensorflow as tf
        model = tf.saved_model.load(sys.argv[1])
        paths = sys.argv[2:]
        images = [open(path, "rb").read() for path in paths]
        outputs = model.signatures["serving_default"](image_bytes=tf.constant(images))
        print(json.dumps({
            "probabilities": outputs["happy_probability"].numpy().tolist(),
            "labels": [label.decode() for label in outputs["label"].numpy()],
            "project_modules": sorted(
                name for name in sys.modules if name.split(".")[0] in ("pipeline", "serving")
            ),
        }))
        """
    )
    directory = os.path.dirname(exported["path"])
    paths = []
    for name, data in samples.items():
        paths.append(os.path.join(directory, name))
        with open(paths[-1], "wb") as handle:
            handle.write(data)
    result = subprocess.run(
        [sys.executable, "-c", script, exported["path"], *paths],
        capture_output=True,
        text=True,
        cwd=directory,  # not the checkout: nothing of the project can be imported by accident
        check=True,
    )
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["project_modules"] == []
    np.testing.assert_allclose(answer["probabilities"], expected, atol=0.02)
    assert set(answer["labels"]) == {"happy", "sad"}


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory, model):
    directory = tmp_path_factory.mktemp("train")
    model.save(directory / "model.keras")
    # As the trainer writes it: input_pipeline.describe() for the dataset, the whole config.
    dataset = {
        "name": "tiny_happysad",
        "config": "faces",
        "version": "1.0.0",
        "data_dir": "/somewhere/local",
        "splits": {"train": 16, "validation": 4, "test": 4},
        "labels": ["sad", "happy"],
    }
    (directory / "train_params.json").write_text(
        json.dumps(
            {
                "config": config.to_dict(config.seed()),
                "dataset": dataset,
                "code_version": {"happysad": "0.1.0", "git_commit": "f00"},
            }
        )
    )
    return str(directory)


def _evaluation(directory, model_sha256, threshold=0.42, blessed=True):
    os.makedirs(directory, exist_ok=True)
    metrics = {
        "accuracy": 0.9,
        "auc": 0.95,
        "n": 20,
        "threshold": threshold,
        "threshold_source": "validation split, max Youden's J",
        "model_sha256": model_sha256,
        "dataset": {
            "name": "tiny_happysad",
            "config": "faces",
            "version": "1.0.0",
            "split": "test",
        },
    }
    blessing = {
        "blessed": blessed,
        "reasons": [] if blessed else ["accuracy too low"],
        "model_sha256": model_sha256,
    }
    for name, content in (("metrics.json", metrics), ("blessing.json", blessing)):
        with open(os.path.join(directory, name), "w") as handle:
            json.dump(content, handle)
    return str(directory)


def _export(train_dir, export_base, warmup_images=4, **arguments):
    cfg = config.replace(config.Config(), **{"export.warmup_images": warmup_images})
    return export.run(cfg, model_path=train_dir, export_base=str(export_base), **arguments)


def test_run_exports_numbered_versions_without_overwriting(tmp_path, train_dir):
    sha256 = artifacts.file_sha256(os.path.join(train_dir, "model.keras"))
    evaluation = _evaluation(tmp_path / "evaluation", sha256)
    lineage = tmp_path / "lineage.json"
    lineage.write_text(json.dumps({"train": {"record": "W/train/record.json"}}))
    base = tmp_path / "export"
    first = _export(
        train_dir, base, warmup_images=2, evaluation_dir=evaluation, lineage=str(lineage)
    )
    assert first["version"] == 1 and first["path"] == str(base / "1")
    assert first["threshold"] == 0.42 and first["blessed"] is True
    card = json.loads((base / "1" / "assets" / "model_card.json").read_text())
    assert card["threshold"] == 0.42 and card["model_name"] == contract.MODEL_NAME
    assert config.from_dict(config.Config, card["config"]) == config.seed()
    assert card["dataset"] == {
        "name": "tiny_happysad",
        "config": "faces",
        "version": "1.0.0",
        "splits": {"train": 16, "validation": 4, "test": 4},
    }
    assert card["code_version"] == {"happysad": "0.1.0", "git_commit": "f00"}
    assert card["export_code_version"]["happysad"] == pipeline.__version__
    assert card["export_code_version"]["sources_sha256"]
    assert card["lineage"] == {"train": {"record": "W/train/record.json"}}
    assert card["metrics"]["accuracy"] == 0.9 and card["metrics"]["split"] == "test"
    assert card["blessing"]["blessed"] is True and card["model_sha256"] == sha256
    assert len(prediction_log.read_warmup_requests(prediction_log.warmup_path(first["path"]))) == 3

    with pytest.raises(errors.UserError, match="already exists"):
        _export(train_dir, base, version=1)
    second = _export(train_dir, base, warmup_images=0)
    assert second["version"] == 2 and second["threshold"] == 0.5
    assert not os.path.exists(prediction_log.warmup_path(second["path"]))
    assert sorted(os.listdir(base)) == ["1", "2"]  # no staging folder left behind


def test_run_refuses_an_evaluation_of_another_model(tmp_path, train_dir):
    evaluation = _evaluation(tmp_path / "evaluation", "0" * 64)
    with pytest.raises(errors.UserError, match="another model"):
        _export(train_dir, tmp_path / "export", evaluation_dir=evaluation)
    assert not os.path.exists(tmp_path / "export" / "1")


def test_failed_export_leaves_no_version(tmp_path):
    # A model for 32x32 images cannot be traced on the contract's 256x256 input.
    wrong = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    os.makedirs(tmp_path / "train")
    wrong.save(tmp_path / "train" / "model.keras")
    base = tmp_path / "export"
    with pytest.raises(ValueError):
        _export(str(tmp_path / "train"), base)
    assert os.listdir(base) == []


def test_export_model_refuses_an_existing_directory(tmp_path):
    model = keras.Sequential(
        [keras.Input((256, 256, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)]
    )
    with pytest.raises(ValueError, match="already exists"):
        export.export_model(model, str(tmp_path), 0.5, {}, [])


def test_run_to_an_object_store_lands_saved_model_pb_last(train_dir, monkeypatch):
    base = ram_filesystem.new_base("exports")
    copied = []
    copy = tf.io.gfile.copy

    def observed_copy(source, destination, overwrite=False):
        copy(source, destination, overwrite)
        copied.append(os.path.basename(destination))

    monkeypatch.setattr(tf.io.gfile, "copy", observed_copy)
    result = _export(train_dir, base, warmup_images=1)
    assert result["path"] == f"{base}/1" and artifacts.list_versions(base) == [1]
    assert copied[-1] == "saved_model.pb" and "tf_serving_warmup_requests" in copied
    served = tf.saved_model.load(result["path"]).signatures["predict_images"]
    assert served(images=tf.zeros([2, 256, 256, 3]))["class_id"].shape == (2,)
