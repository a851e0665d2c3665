"""Serving that holds: hostile requests, slow clients, overload and shutdown (issue 16).

One test per row of the issue's table (the per-format pixel budget lives in the serving
graph, tested with the export), with timeouts shrunk to fractions of a second. Raw sockets
play the clients an HTTP library would never be.
"""

import base64
import io
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from serving import client, status
from tests.serving.conftest import IMAGE_SIZE, encode_image, free_port, install_version, start

TIMEOUT = 0.5  # the header, body and keep-alive timeouts of the servers below


@pytest.fixture(scope="module")
def server(tmp_path_factory, exported_models):
    base_path = tmp_path_factory.mktemp("reliability")
    install_version(exported_models["image"], base_path, 1)
    with start(
        model_name="m",
        model_base_path=str(base_path),
        enable_batching=True,
        rest_api_header_timeout_seconds=TIMEOUT,
        rest_api_body_timeout_seconds=TIMEOUT,
        rest_api_keepalive_timeout_seconds=TIMEOUT,
        rest_api_max_connections=40,
    ) as handle:
        handle.port = int(handle.url.rsplit(":", 1)[1])
        yield handle


def post(url: str, body: dict | bytes):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def raw(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Sends `data` on a fresh connection and returns everything read until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as connection:
        connection.sendall(data)
        chunks = []
        while True:
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def answer(response: bytes) -> tuple[int, dict]:
    """(status, JSON body) of a raw HTTP response."""
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def predict_url(handle) -> str:
    return f"{handle.url}/v1/models/m:predict"


def healthy(handle) -> bool:
    body = {"instances": [{"b64": base64.b64encode(encode_image(200)).decode()}]}
    return post(predict_url(handle), body)[0] == 200


# -- 1: bounded work per request -------------------------------------------------------------


def test_a_request_larger_than_the_batch_is_refused_before_it_is_decoded(server):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="JPEG")
    instance = {"b64": base64.b64encode(buffer.getvalue()).decode()}
    code, document = post(predict_url(server), {"instances": [instance] * 2000})
    assert (code, document) == (
        400,
        {"error": "Task size 2000 is larger than maximum input batch size 1000"},
    )
    assert healthy(server)


def test_large_batch_splitting_runs_a_big_request_in_bounded_batches(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    parameters = tmp_path / "batching.txt"
    parameters.write_text(
        "max_batch_size { value: 5000 } max_execution_batch_size { value: 64 } "
        "enable_large_batch_splitting { value: true } max_enqueued_batches { value: 100 }"
    )
    with start(
        model_name="m",
        model_base_path=str(tmp_path),
        enable_batching=True,
        batching_parameters_file=str(parameters),
    ) as handle:
        pixels = np.full((300, IMAGE_SIZE, IMAGE_SIZE, 3), 250.0).tolist()
        runs = handle.metrics.wrapped_run_count.total()
        code, document = post(
            predict_url(handle), {"signature_name": "predict_images", "instances": pixels}
        )
        assert code == 200 and len(document["predictions"]) == 300
        assert {item["label"] for item in document["predictions"]} == {"happy"}
        assert handle.metrics.wrapped_run_count.total() - runs == 5  # 64 * 4 + 44


def test_a_run_past_its_deadline_is_cancelled_and_the_server_goes_on(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    with start(model_name="m", model_base_path=str(tmp_path), rest_api_timeout_in_ms=300) as handle:
        started = time.monotonic()
        body = {"signature_name": "spin", "instances": [10**9]}
        assert post(predict_url(handle), body) == (504, {"error": "Deadline Exceeded"})
        assert time.monotonic() - started < 5
        assert healthy(handle)


# -- 3: slow and silent clients --------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"POST /v1/mo",  # half a request line
        b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Le",  # partial headers
    ],
)
def test_requests_whose_headers_never_arrive_get_408_and_a_close(server, data):
    started = time.monotonic()
    code, document = answer(raw(server.port, data))
    assert code == 408 and "did not arrive within 0.5 s" in document["error"]
    assert time.monotonic() - started < 4


def test_a_body_that_never_arrives_gets_408(server):
    head = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
    code, document = answer(raw(server.port, head))
    assert code == 408 and "--rest_api_body_timeout_seconds" in document["error"]


def test_a_silent_or_idle_connection_is_closed(server):
    started = time.monotonic()
    assert raw(server.port, b"") == b""  # closed by the server, nothing said
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # keep-alive, then idle
    assert raw(server.port, request).startswith(b"HTTP/1.1 200")
    assert time.monotonic() - started < 4


def test_connections_past_the_cap_are_refused_politely_and_others_served(server):
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(60)]
    try:
        for connection in held:  # keep them from the keep-alive timeout: partial headers
            connection.sendall(b"GET /healthz HTTP/1.1\r\n")
        code, document = answer(raw(server.port, b"GET /healthz HTTP/1.1\r\n\r\n"))
        assert code == 503 and document == {"error": "Too many open connections; try again later"}
    finally:
        for connection in held:
            connection.close()
    deadline = time.monotonic() + 10
    while not healthy(server):  # the cap frees up as the held connections go
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_normal_client_is_served_while_slow_ones_hold_connections(server):
    slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    try:
        for connection in slow:
            connection.sendall(b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert healthy(server)
        assert time.monotonic() - started < 1
    finally:
        for connection in slow:
            connection.close()


# -- 4, 7, 8, 9: what the parser and the body reader refuse ----------------------------------


def test_deeply_nested_json_is_a_parse_error(server):
    code, document = post(predict_url(server), b"[" * 100_000)
    assert code == 400 and document["error"].startswith("JSON Parse error")


def test_expect_100_continue_with_a_body_too_large_is_413_at_once(server):
    head = (
        b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    started = time.monotonic()
    response = raw(server.port, head)
    assert not response.startswith(b"HTTP/1.1 100")
    code, document = answer(response)
    assert code == 413 and "--max_request_bytes" in document["error"]
    assert time.monotonic() - started < 4


@pytest.mark.parametrize(
    "data, code",
    [
        (b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (
            b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            501,
        ),
    ],
)
def test_requests_the_parser_refuses_get_json_errors_and_one_log_line(server, data, code, caplog):
    with caplog.at_level(logging.WARNING, logger="serving"):
        answered, document = answer(raw(server.port, data))
    assert answered == code and list(document) == ["error"]
    records = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(records) <= 1 and not any(record.exc_info for record in records)


def test_non_finite_pixels_are_refused(server):
    pixels = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 100.0).tolist()
    pixels[0][0][0] = float("nan")
    body = json.dumps({"signature_name": "predict_images", "instances": [pixels]}, allow_nan=True)
    code, document = post(predict_url(server), body.encode())
    assert code == 400 and "NaN or Infinity" in document["error"]
    body = body.replace("NaN", "Infinity")
    assert post(predict_url(server), body.encode())[0] == 400


def test_error_messages_are_bounded(server):
    code, document = post(
        predict_url(server), {"signature_name": "s" * 10_000_000, "instances": [1]}
    )
    assert code == 400 and len(document["error"]) <= status.MAX_MESSAGE_CHARS + 20
    assert document["error"].endswith(status.TRUNCATED_SUFFIX)


# -- 5, 6: shutdown ---------------------------------------------------------------------------


def serve(tmp_path, port: int, *arguments: str) -> subprocess.Popen:
    command = [
        *(sys.executable, "-m", "serving", "--model_name=m", f"--model_base_path={tmp_path}"),
        *(f"--rest_api_port={port}", "--port=0", f"--grpc_socket_path={tmp_path}/grpc.sock"),
        *arguments,
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    client.wait_until_ready(f"http://127.0.0.1:{port}", "m", timeout=120)
    return process


def test_sigterm_drains_then_stops_and_every_client_is_answered(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    port = free_port()
    process = serve(tmp_path, port, "--shutdown_drain_seconds=2")
    try:
        keep_alive = socket.create_connection(("127.0.0.1", port))
        request = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        body = json.dumps({"signature_name": "scalar_stats", "inputs": [1.0]}).encode()
        keep_alive.sendall(request % (len(body), body))
        assert b"Connection: close" not in keep_alive.recv(65536)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        code, document = answer(raw(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert code == 503 and document["reason"] == "shutting down"
        keep_alive.sendall(request % (len(body), body))  # the same connection, while draining
        response = keep_alive.recv(65536)
        assert response.startswith(b"HTTP/1.1 200") and b"Connection: close" in response
        keep_alive.close()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_exits_within_the_timeout_answering_a_run_it_cancels(tmp_path, exported_models):
    install_version(exported_models["image"], tmp_path, 1)
    port = free_port()
    process = serve(
        tmp_path, port, "--shutdown_timeout_seconds=2", "--rest_api_timeout_in_ms=600000"
    )
    try:
        answers = []
        body = {"signature_name": "spin", "instances": [10**9]}
        url = f"http://127.0.0.1:{port}/v1/models/m:predict"
        caller = threading.Thread(target=lambda: answers.append(post(url, body)))
        caller.start()
        time.sleep(1.0)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - started < 4
        caller.join(timeout=10)
        assert answers == [(503, {"error": "The server is shutting down"})]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
