"""Version discovery, loading, warm-up, hot swap and unloading, driven by explicit polls."""

import os

import numpy as np
import pytest

from serving import metrics, model_manager, prediction_log, status
from tests.serving.conftest import encode_image, install_version

BRIGHT = encode_image(220)


def manager_for(base_path, **options):
    return model_manager.ModelManager(
        "happysad", str(base_path), metrics=metrics.ServerMetrics(), **options
    )


def states(manager):
    document = manager.status("happysad")
    return {int(item["version"]): item["state"] for item in document["model_version_status"]}


def marker_of(manager, version=None):
    """Which export answers: the image models carry a marker (1 or 2) in `multi_io`."""
    servable = manager.servable("happysad", version)
    tensors = {
        "a": np.zeros((1, 2), np.float32),
        "b": np.zeros(1, np.int64),
        "tag": np.array([b""], object),
    }
    return int(servable.predict("multi_io", tensors)["marker"][0])


def test_only_numbered_saved_model_directories_are_versions(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 3)
    os.makedirs(tmp_path / "7")  # being copied: no saved_model.pb yet
    os.makedirs(tmp_path / "notes")
    assert model_manager.list_versions(str(tmp_path)) == [3]
    assert model_manager.list_versions(str(tmp_path / "missing")) == []


def test_latest_version_serves_and_a_new_one_replaces_it(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    manager = manager_for(tmp_path)
    assert not manager.ready
    manager.poll_once()
    assert manager.ready and states(manager) == {1: "AVAILABLE"}
    assert marker_of(manager) == 1

    install_version(exported_models["image_v2"], tmp_path, 2)
    old = manager.servable("happysad")
    manager.poll_once()
    assert states(manager) == {2: "AVAILABLE", 1: "END"}
    assert marker_of(manager) == 2
    assert manager.status("happysad")["model_version_status"][0]["version"] == "2"
    # A request that took version 1 before the swap still completes on it.
    assert old.predict("", {"image_bytes": _images(BRIGHT)})["label"].tolist() == [b"happy"]
    with pytest.raises(status.ServingError, match=r"Specific\(happysad, 1\)"):
        manager.servable("happysad", 1)


def test_removed_version_is_unloaded(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    install_version(exported_models["image_v2"], tmp_path, 2)
    manager = manager_for(tmp_path, version_policy=model_manager.ALL_POLICY)
    manager.poll_once()
    assert states(manager) == {2: "AVAILABLE", 1: "AVAILABLE"}
    assert marker_of(manager, 1) == 1 and marker_of(manager) == 2

    os.rename(tmp_path / "2", tmp_path / ".trash-2")
    manager.poll_once()
    assert states(manager) == {2: "END", 1: "AVAILABLE"}
    assert marker_of(manager) == 1


def test_broken_push_keeps_the_old_version_serving(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    manager = manager_for(tmp_path, max_num_load_retries=1)
    manager.poll_once()
    broken = tmp_path / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"definitely not a SavedModel")
    for _ in range(3):
        manager.poll_once()

    version_2 = manager.status("happysad", 2)["model_version_status"][0]
    assert version_2["state"] == "END"
    assert version_2["status"]["error_code"] != "OK" and version_2["status"]["error_message"]
    assert states(manager)[1] == "AVAILABLE"
    assert marker_of(manager) == 1


def test_warmup_requests_are_replayed_before_available(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)  # carries a warm-up file
    manager = manager_for(tmp_path)
    manager.poll_once()
    histogram = manager._metrics.model_warmup_latency
    assert histogram.count(model_path=str(tmp_path / "1"), status="OK") == 1


def test_failing_warmup_refuses_the_version(tmp_path, exported_models):
    target = install_version(exported_models["image_v2"], tmp_path, 4)
    wrong_input = prediction_log.predict_request({"no_such_input": [b"x"]}, "happysad")
    prediction_log.write_warmup_requests(prediction_log.warmup_path(target), [wrong_input])
    manager = manager_for(tmp_path, max_num_load_retries=0)
    manager.poll_once()

    version = manager.status("happysad")["model_version_status"][0]
    assert version["state"] == "END"
    assert version["status"]["error_code"] == "INVALID_ARGUMENT"
    assert "no_such_input" in version["status"]["error_message"]
    assert not manager.ready


def test_not_found_messages_follow_tf_serving(tmp_path):
    manager = manager_for(tmp_path)
    manager.poll_once()
    with pytest.raises(
        status.ServingError, match=r"Servable not found for request: Latest\(happysad\)"
    ) as error:
        manager.servable("happysad")
    assert error.value.http_status == 404
    with pytest.raises(status.ServingError, match="Could not find any versions of model other"):
        manager.status("other")
    with pytest.raises(status.ServingError, match="Could not find version 9 of model happysad"):
        manager.status("happysad", 9)


def _images(*images):
    array = np.empty(len(images), dtype=object)
    array[:] = list(images)
    return array
