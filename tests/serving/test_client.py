"""The REST client and `happysad predict`: pure request/response code, retries, real calls."""

import asyncio
import base64
import json
import socket
import threading

import pytest
from aiohttp import web

from pipeline import cli
from serving import client
from tests.serving.conftest import encode_image, install_version, start

# -- pure functions ------------------------------------------------------------------------


def test_build_predict_request_is_row_format_b64():
    request = client.build_predict_request([b"\x00\x01", b"jpeg"])
    assert request == {
        "signature_name": "serving_default",
        "instances": [{"b64": "AAE="}, {"b64": base64.b64encode(b"jpeg").decode()}],
    }
    with pytest.raises(ValueError):
        client.build_predict_request([])


def test_parse_predict_response():
    document = {
        "predictions": [
            {"happy_probability": 0.9, "label": "happy", "class_id": 1},
            {"happy_probability": 0.2, "label": "sad", "class_id": 0},
        ]
    }
    outputs = client.parse_predict_response(document, 2)
    happy, sad = (
        client.to_prediction(name, item) for name, item in zip("ab", outputs, strict=True)
    )
    assert (happy.label, happy.probability) == ("happy", pytest.approx(0.9))
    assert (sad.label, sad.probability, sad.happy_probability) == ("sad", pytest.approx(0.8), 0.2)
    assert sad.to_json() == {"file": "b", "label": "sad", "probability": 0.8}
    assert client.parse_predict_response({"predictions": [0.5]}, 1) == [{"output": 0.5}]


@pytest.mark.parametrize(
    "document, message",
    [
        ({"error": "Servable not found"}, "Servable not found"),
        ({"predictions": [{}]}, "expected 2 predictions"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_parse_predict_response_errors(document, message):
    with pytest.raises(client.ServerError, match=message):
        client.parse_predict_response(document, 2)


def test_to_prediction_needs_the_happysad_outputs():
    with pytest.raises(client.ServerError, match="no 'happy_probability' output"):
        client.to_prediction("x", {"scores": 0.3})


def test_model_url():
    assert client.model_url("http://h:1/", "m") == "http://h:1/v1/models/m"
    assert (
        client.model_url("http://h:1", "m", 3, ":predict")
        == "http://h:1/v1/models/m/versions/3:predict"
    )


# -- against a fake server: retries, timeouts ----------------------------------------------


class FakeServer:
    """An aiohttp app in a thread answering :predict from a script of (status, body)."""

    def __init__(self, script, delay=0.0):
        self.script = list(script)
        self.delay = delay
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    async def _handle(self, request):
        self.requests += 1
        await request.read()
        await asyncio.sleep(self.delay)
        code, body = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return web.json_response(body, status=code)

    def _serve(self):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        self.ready.set()
        self.loop.run_forever()

    def close(self):
        async def stop():
            await self.runner.cleanup()
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop)
        self.thread.join(10)


HAPPY = {"predictions": [{"happy_probability": 0.75, "label": "happy", "class_id": 1}]}
OVERLOADED = (503, {"error": "The batch scheduling queue to which this task was submitted is full"})


@pytest.fixture
def fake_server(request):
    servers = []

    def make(script, delay=0.0):
        servers.append(FakeServer(script, delay))
        return servers[-1]

    yield make
    for fake in servers:
        fake.close()


def test_503_is_retried_with_backoff(fake_server, monkeypatch):
    monkeypatch.setattr(client, "BACKOFF_SECONDS", 0.01)
    fake = fake_server([OVERLOADED, OVERLOADED, (200, HAPPY)])
    [prediction] = client.predict([b"img"], url=fake.url, model="m")
    assert prediction.label == "happy" and fake.requests == 3


def test_503_after_the_last_retry_is_an_error(fake_server, monkeypatch):
    monkeypatch.setattr(client, "BACKOFF_SECONDS", 0.01)
    fake = fake_server([OVERLOADED])
    with pytest.raises(
        client.ServerError, match="answered 503: The batch scheduling queue"
    ) as error:
        client.predict([b"img"], url=fake.url, model="m", retries=2)
    assert error.value.http_status == 503 and fake.requests == 3


def test_other_errors_are_not_retried(fake_server):
    fake = fake_server([(400, {"error": "JSON Parse error"}), (200, HAPPY)])
    with pytest.raises(client.ServerError, match="answered 400: JSON Parse error"):
        client.predict([b"img"], url=fake.url, model="m")
    assert fake.requests == 1


def test_timeout_is_one_clear_error(fake_server):
    fake = fake_server([(200, HAPPY)], delay=2.0)
    with pytest.raises(client.ServerError, match="no answer from the model server .* within 0.2 s"):
        client.predict([b"img"], url=fake.url, model="m", timeout=0.2)


def test_unreachable_server_is_one_clear_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(
        client.ServerError, match="cannot reach the model server at http://127.0.0.1"
    ):
        client.model_status(f"http://127.0.0.1:{port}", "m", retries=0)
    with pytest.raises(TimeoutError, match="not ready after 0.3 s"):
        client.wait_until_ready(f"http://127.0.0.1:{port}", "m", timeout=0.3, poll_seconds=0.1)


def test_sync_helpers_work_inside_a_running_event_loop(fake_server):
    fake = fake_server([(200, HAPPY)])

    async def main():
        return client.predict([b"img"], url=fake.url, model="m")

    assert asyncio.run(main())[0].label == "happy"


# -- against the real server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, exported_models):
    base_path = tmp_path_factory.mktemp("client_base")
    install_version(exported_models["image"], base_path, 1)
    with start(model_base_path=str(base_path), model_name="happysad") as handle:
        client.wait_until_ready(handle.url, "happysad", timeout=60)
        yield handle


@pytest.fixture
def image_files(tmp_path):
    paths = []
    for name, brightness in (("smile.png", 230), ("frown.jpg", 20), ("grin.png", 200)):
        path = tmp_path / name
        path.write_bytes(
            encode_image(brightness, image_format="JPEG" if name.endswith("jpg") else "PNG")
        )
        paths.append(str(path))
    return paths


def test_predict_status_and_metadata_against_the_server(live_server, image_files):
    predictions = client.predict(image_files, url=live_server.url, model="happysad", batch_size=2)
    assert [p.file for p in predictions] == image_files
    assert [p.label for p in predictions] == ["happy", "sad", "happy"]
    assert predictions[1].probability == pytest.approx(1 - 20 / 255, abs=0.02)
    pinned = client.predict(image_files[:1], url=live_server.url, model="happysad", version=1)
    assert pinned[0].label == "happy"

    status = client.model_status(live_server.url, "happysad")
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    metadata = client.model_metadata(live_server.url, "happysad", version=1)
    assert "serving_default" in metadata["metadata"]["signature_def"]["signature_def"]
    with pytest.raises(client.ServerError, match="answered 404: Servable not found"):
        client.predict(image_files[:1], url=live_server.url, model="happysad", version=5)


def test_predict_and_status_over_grpc(live_server, image_files):
    predictions = client.predict_grpc(
        image_files, target=live_server.grpc_address, model="happysad", batch_size=2
    )
    assert [p.label for p in predictions] == ["happy", "sad", "happy"]
    assert predictions[1].probability == pytest.approx(1 - 20 / 255, abs=0.02)
    status = client.model_status_grpc(live_server.grpc_address, "happysad")
    assert status.model_version_status[0].version == 1
    with pytest.raises(client.ServerError, match="answered NOT_FOUND: Servable not found"):
        client.predict_grpc(image_files[:1], target=live_server.grpc_address, model="nope")


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_happysad_predict_prints_one_json_line_per_image(
    live_server, image_files, capsys, protocol
):
    server = live_server.url if protocol == "rest" else live_server.grpc_address
    extra = ["--grpc"] if protocol == "grpc" else []
    code = cli.main(["predict", *image_files, "--server", server, "--model", "happysad", *extra])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["file"], line["label"]) for line in lines] == list(
        zip(image_files, ["happy", "sad", "happy"], strict=True)
    )
    assert all(set(line) == {"file", "label", "probability"} for line in lines)
    assert all(0.5 <= line["probability"] <= 1 for line in lines)


def test_happysad_predict_writes_a_file_and_reports_missing_images(
    live_server, image_files, tmp_path, capsys
):
    output = tmp_path / "predictions.jsonl"
    arguments = ["--server", live_server.url, "--model", "happysad", "--output", str(output)]
    assert cli.main(["predict", image_files[0], *arguments]) == 0
    assert json.loads(output.read_text())["label"] == "happy"
    assert cli.main(["predict", str(tmp_path / "missing.jpg"), *arguments]) == 2
    assert "missing.jpg: no such image file" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_happysad_predict_gives_a_refused_image_its_own_line(
    live_server, image_files, tmp_path, capsys, protocol
):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    images = [image_files[0], str(text), image_files[1]]
    server = live_server.url if protocol == "rest" else live_server.grpc_address
    extra = ["--grpc"] if protocol == "grpc" else []
    code = cli.main(["predict", *images, "--server", server, "--model", "happysad", *extra])
    captured = capsys.readouterr()
    assert code == 2
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["file"] for line in lines] == images
    assert [line.get("label") for line in lines] == ["happy", None, "sad"]
    assert set(lines[1]) == {"file", "error"}
    assert lines[1]["error"] and "\n" not in lines[1]["error"] and "[[" not in lines[1]["error"]
    error = captured.err.strip().splitlines()[-1]
    assert (
        error
        == "happysad predict: error: the server refused 1 of 3 images (each has a line with its reason)"
    )


@pytest.mark.parametrize(
    "message, reason",
    [
        (
            "the server answered 400: assertion failed: [not_an_image: the content is not an "
            "image]\n\t [[{{node map/while/Assert/Assert}}]]",
            "not_an_image: the content is not an image",
        ),
        (
            "the server answered INVALID_ARGUMENT: jpeg::Uncompress failed. Invalid JPEG data or "
            "crop window.\n\t [[{{node DecodeJpeg}}]]",
            "jpeg::Uncompress failed. Invalid JPEG data or crop window.",
        ),
    ],
)
def test_refusal_reason_is_one_line(message, reason):
    assert client.refusal_reason(message) == reason


def test_happysad_predict_names_a_folder(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path), "--server", "http://127.0.0.1:9"]) == 2
    assert "a folder, not an image file" in capsys.readouterr().err
