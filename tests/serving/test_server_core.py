"""Versions under a base path: discovered by polling, loaded, warmed up, swapped, unloaded."""

import os

import numpy as np
import pytest

from pipeline.export import warmup
from serving import servable as servable_lib
from serving import server_core, status
from tests.serving.conftest import encode_image, install_version

BRIGHT = encode_image(220)
State = server_core.State


def core_for(base_path, policy: str = "", **options):
    """A ServerCore serving base_path as "happysad", loaded by one explicit reload."""
    warmups = []
    core = server_core.ServerCore(
        server_core.CoreOptions(**options),
        loader=lambda name, version, path: servable_lib.Servable(name, version, path),
        on_warmup=lambda *record: warmups.append(record),
    )
    core.warmups = warmups
    config = server_core.single_model_config("happysad", str(base_path))
    if policy:
        getattr(config.model_config_list.config[0].model_version_policy, policy).SetInParent()
    core.reload_config(config, wait=False)
    return core


def states(core) -> dict[int, str]:
    return {
        item.version: State.Name(item.state)
        for item in core.status("happysad").model_version_status
    }


def marker_of(core, version=None) -> int:
    """Which export answers: the image models carry a marker (1 or 2) in `multi_io`."""
    servable = core.servable("happysad", version)
    tensors = {
        "a": np.zeros((1, 2), np.float32),
        "b": np.zeros(1, np.int64),
        "tag": np.array([b""], object),
    }
    return int(servable.predict("multi_io", tensors)["marker"][0])


def test_only_numbered_saved_model_directories_are_versions(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, "0003")
    os.makedirs(tmp_path / "7")  # being copied: no saved_model.pb yet
    os.makedirs(tmp_path / "notes")
    os.makedirs(tmp_path / "-1")
    assert server_core.list_versions(str(tmp_path)) == {3: "0003"}
    assert server_core.list_versions(str(tmp_path / "missing")) == {}


def test_latest_version_serves_and_a_new_one_replaces_it(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    core = core_for(tmp_path)
    assert states(core) == {1: "AVAILABLE"} and marker_of(core) == 1

    install_version(exported_models["image_v2"], tmp_path, 2)
    old = core.servable("happysad")
    core.poll_once()
    assert states(core) == {2: "AVAILABLE", 1: "END"}
    assert marker_of(core) == 2
    # A request that took version 1 before the swap still completes on it.
    assert old.predict("", {"image_bytes": _images(BRIGHT)})["label"].tolist() == [b"happy"]
    with pytest.raises(status.ServingError, match=r"Specific\(happysad, 1\)"):
        core.servable("happysad", 1)


def test_all_policy_keeps_every_version_and_a_removed_one_is_unloaded(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    install_version(exported_models["image_v2"], tmp_path, 2)
    core = core_for(tmp_path, policy="all")
    assert states(core) == {2: "AVAILABLE", 1: "AVAILABLE"}
    assert marker_of(core, 1) == 1 and marker_of(core) == 2

    os.rename(tmp_path / "2", tmp_path / ".trash-2")
    core.poll_once()
    assert states(core) == {2: "END", 1: "AVAILABLE"}  # as TF Serving's status monitor keeps it
    assert marker_of(core) == 1


def test_broken_push_keeps_the_old_version_serving(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    core = core_for(tmp_path, max_num_load_retries=1, load_retry_interval_micros=0)
    broken = tmp_path / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"definitely not a SavedModel")
    for _ in range(3):
        core.poll_once()

    (version_2,) = core.status("happysad", 2).model_version_status
    assert State.Name(version_2.state) == "END"
    assert version_2.status.error_code != 0 and version_2.status.error_message
    assert states(core)[1] == "AVAILABLE"
    assert marker_of(core) == 1


def test_warmup_requests_are_replayed_before_available(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)  # carries a warm-up file
    core = core_for(tmp_path)
    assert core.warmups and core.warmups[0][:2] == (str(tmp_path / "1"), "OK")
    assert core.warmups[0][3] == 1  # records read


def test_failing_warmup_refuses_the_version(tmp_path, exported_models):
    target = install_version(exported_models["image_v2"], tmp_path, 4)
    wrong_input = warmup.predict_request({"no_such_input": [b"x"]}, "happysad")
    warmup.write_requests(target, [wrong_input])
    core = core_for(tmp_path, max_num_load_retries=0)

    (version,) = core.status("happysad").model_version_status
    assert State.Name(version.state) == "END"
    assert version.status.error_code == status.Code.INVALID_ARGUMENT
    assert "no_such_input" in version.status.error_message
    with pytest.raises(status.ServingError, match="did not become available"):
        core.wait_until_available(["happysad"], timeout=5)


def test_warmup_can_be_turned_off(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    assert core_for(tmp_path, enable_model_warmup=False).warmups == []


def test_not_found_messages_follow_tf_serving(tmp_path):
    core = core_for(tmp_path)
    with pytest.raises(
        status.ServingError, match=r"Servable not found for request: Latest\(happysad\)"
    ) as error:
        core.servable("happysad")
    assert error.value.http_status == 404
    with pytest.raises(status.ServingError, match="Could not find any versions of model other"):
        core.status("other")
    with pytest.raises(status.ServingError, match="Could not find version 9 of model happysad"):
        core.status("happysad", 9)
    with pytest.raises(status.ServingError, match="ModelSpec has no name specified."):
        core.servable("")


def _images(*images):
    array = np.empty(len(images), dtype=object)
    array[:] = list(images)
    return array
