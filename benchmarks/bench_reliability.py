"""`happysad serve` under sustained, hostile and unlucky load (issue 16), bounded in time.

Every scenario runs `python -m serving` in a subprocess on 127.0.0.1 with a small image model
(decode, resize, mean colour: the model costs little, so the server's own handling is what
is measured) and drives it from this process:

  soak          closed-loop predict requests at concurrency 64 and 256 (60 s each; --quick
                10 s): requests, status codes, p50/p99, peak RSS, failed requests.
  overload      a burst of 1,000 requests at once (--quick 300) against a small queue: every
                one answered 200 or 503 with Retry-After, none failed.
  slow clients  1,000 connections (--quick 300) that send headers a byte at a time and never
                finish, with a normal client alongside: its latency.
  fd pressure   more connections than --rest_api_max_connections opened and held: the ones
                past the cap get 503 at once, a normal client gets an answer, and the log
                stays small.
  SIGTERM       32 clients in a closed loop when SIGTERM arrives (--shutdown_drain_seconds=2),
                half of them behind a balancer that follows /readyz, half ignoring it:
                requests answered, refused before being sent (connection refused), and lost
                (sent, never answered): the goal is 0 lost behind the balancer.
  pushes        two versions pushed under load at concurrency 16, the second broken:
                failed requests (the goal is 0) and which versions answered.
  big requests  a client sending requests of 1,000 256x256 JPEGs (--quick 300) in a loop,
                with a normal client alongside: the normal client's latency against its
                latency alone (same run), and the server's memory before, at peak, after.

Figures are printed and returned as rows for benchmarks/RESULTS.md. Failed means a transport
error, a timeout, or a status other than 200 (and 503 where overload is the point).
"""

import asyncio
import base64
import collections
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import common

NAME = "reliability"
MODEL_NAME = "faces"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUEST_TIMEOUT_SECONDS = 60
TARGET_NORMAL_CLIENT_MS = 1000
TARGET_PEAK_RSS_MIB = 2048


def _export(path: str, marker: int) -> None:
    """A small image model: decode, resize to 32x32, mean colour; `marker` tells versions apart."""
    import tensorflow as tf

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.marker = tf.Variable(marker, dtype=tf.int64, trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            def decode(data):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                return tf.image.resize(tf.cast(image, tf.float32), [32, 32])

            images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.float32)
            probability = tf.reduce_mean(images, axis=[1, 2, 3]) / 255.0
            return {
                "happy_probability": probability,
                "version": tf.fill(tf.shape(image_bytes), self.marker),
            }

    module = Model()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})


def _push(source: str, base_path: str, version: int) -> None:
    """As happysad push does on a local disk: copied aside, then one rename."""
    partial = os.path.join(base_path, f".{version}.tmp")
    shutil.copytree(source, partial)
    os.rename(partial, os.path.join(base_path, str(version)))


def _jpeg(brightness: int, side: int = 64) -> bytes:
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(brightness).integers(0, 255, (side, side, 3), np.uint8)
    image = Image.fromarray(noise // 4 + brightness % 192)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Server:
    """`python -m serving` in a subprocess; stderr goes to a file (its size is a figure)."""

    def __init__(self, workdir: str, base_path: str, *flags: str):
        self.port = _free_port()
        self.log_path = os.path.join(workdir, f"server-{self.port}.log")
        command = [
            *(sys.executable, "-m", "serving", f"--model_name={MODEL_NAME}"),
            *(f"--model_base_path={base_path}", f"--rest_api_port={self.port}", "--port=0"),
            f"--grpc_socket_path={os.path.join(workdir, f'grpc-{self.port}.sock')}",
            "--file_system_poll_wait_seconds=1",
            *flags,
        ]
        self.log = open(self.log_path, "w", encoding="utf-8")
        environment = dict(os.environ, PYTHONPATH=REPO_ROOT)
        self.process = subprocess.Popen(command, stderr=self.log, env=environment, cwd=REPO_ROOT)
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 300) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError("the server did not become ready")

    def memory_mib(self) -> tuple[float, float]:
        """(peak, current) resident memory of the server process."""
        values = {}
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status_file:
            for line in status_file:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    values[key] = int(value.split()[0]) / 1024
        return values.get("VmHWM", 0.0), values.get("VmRSS", 0.0)

    def log_size(self) -> int:
        self.log.flush()
        return os.path.getsize(self.log_path)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


def _body(image: bytes) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()


async def _closed_loop(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    """`concurrency` clients sending the next request on each answer, for `seconds`."""
    import aiohttp

    codes: collections.Counter = collections.Counter()
    latencies, versions = [], collections.Counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            index = offset
            while time.perf_counter() < deadline:
                begin = time.perf_counter()
                try:
                    async with session.post(url, data=bodies[index % len(bodies)]) as response:
                        payload = await response.read()
                        codes[response.status] += 1
                        if response.status == 200:
                            latencies.append(time.perf_counter() - begin)
                            versions[json.loads(payload)["predictions"][0]["version"]] += 1
                except (TimeoutError, aiohttp.ClientError) as error:
                    codes[type(error).__name__] += 1
                index += concurrency

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    latencies.sort()
    return {
        "codes": dict(codes),
        "requests": sum(codes.values()),
        "failed": sum(count for code, count in codes.items() if code != 200),
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "versions": dict(versions),
    }


def _report(title: str, figures: dict) -> None:
    print(f"   {title}: {json.dumps(figures, default=str)}", flush=True)


def _soak(workdir: str, base_path: str, bodies: list[bytes], seconds: float) -> list[common.Row]:
    rows = []
    for concurrency in (64, 256):
        server = _Server(workdir, base_path, "--enable_batching")
        try:
            _, before = server.memory_mib()
            result = asyncio.run(
                _closed_loop(
                    f"{server.url}/v1/models/{MODEL_NAME}:predict", bodies, concurrency, seconds
                )
            )
            peak, after = server.memory_mib()
        finally:
            server.stop()
        result.update(peak_rss_mib=peak, rss_before_mib=before, rss_after_mib=after)
        _report(f"soak {seconds:g} s, concurrency {concurrency}", result)
        prefix = f"soak {seconds:g} s, concurrency {concurrency}"
        rows += [
            common.Row(NAME, f"{prefix}: requests", result["requests"], "requests"),
            common.Row(
                NAME, f"{prefix}: failed requests", result["failed"], "requests", target="0"
            ),
            common.Row(
                NAME, f"{prefix}: p50 latency", result["p50_ms"], "ms", higher_is_better=False
            ),
            common.Row(
                NAME, f"{prefix}: p99 latency", result["p99_ms"], "ms", higher_is_better=False
            ),
            common.Row(
                NAME,
                f"{prefix}: peak RSS",
                peak,
                "MiB",
                "RSS before the load",
                before,
                f"< {TARGET_PEAK_RSS_MIB} MiB",
                higher_is_better=False,
            ),
        ]
    return rows


def _overload(workdir: str, base_path: str, bodies: list[bytes], count: int) -> list[common.Row]:
    import aiohttp

    parameters = os.path.join(workdir, "small_queue.txt")
    with open(parameters, "w", encoding="utf-8") as file:
        file.write("max_batch_size { value: 8 } max_enqueued_batches { value: 4 }\n")
    server = _Server(
        workdir, base_path, "--enable_batching", f"--batching_parameters_file={parameters}"
    )

    async def burst() -> collections.Counter:
        codes: collections.Counter = collections.Counter()
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        url = f"{server.url}/v1/models/{MODEL_NAME}:predict"
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one(index: int) -> None:
                try:
                    async with session.post(url, data=bodies[index % len(bodies)]) as response:
                        await response.read()
                        retry = response.headers.get("Retry-After")
                        codes[f"{response.status}" + (" Retry-After" if retry else "")] += 1
                except (TimeoutError, aiohttp.ClientError) as error:
                    codes[type(error).__name__] += 1

            await asyncio.gather(*(one(i) for i in range(count)))
        return codes

    try:
        codes = asyncio.run(burst())
        peak, _ = server.memory_mib()
    finally:
        server.stop()
    failed = sum(n for code, n in codes.items() if code not in ("200", "503 Retry-After"))
    _report(f"overload burst of {count}", {"codes": dict(codes), "peak_rss_mib": peak})
    return [
        common.Row(NAME, f"overload burst of {count}: answered 200", codes["200"], "requests"),
        common.Row(
            NAME,
            f"overload burst of {count}: answered 503 + Retry-After",
            codes["503 Retry-After"],
            "requests",
        ),
        common.Row(NAME, f"overload burst of {count}: failed", failed, "requests", target="0"),
    ]


async def _normal_client(url: str, body: bytes, count: int = 20) -> tuple[float, float, int]:
    """(p50 ms, max ms, failures) of `count` sequential requests on fresh connections."""
    import aiohttp

    latencies, failures = [], 0
    for _ in range(count):
        begin = time.perf_counter()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                async with session.post(url, data=body) as response:
                    await response.read()
                    failures += response.status != 200
        except (TimeoutError, aiohttp.ClientError):
            failures += 1
        latencies.append(1000 * (time.perf_counter() - begin))
    latencies.sort()
    return latencies[len(latencies) // 2], latencies[-1], failures


async def _hold(port: int, count: int, trickle: bool) -> list:
    """`count` connections that began a request and never finish it."""
    connections = []
    for _ in range(count):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            break
        writer.write(b"POST /v1/models/faces:predict HTTP/1.1\r\nHost: x\r\n")
        connections.append(writer)
    if trickle:
        for writer in connections:
            writer.write(b"X")
    return connections


def _slow_clients(workdir: str, base_path: str, body: bytes, count: int) -> list[common.Row]:
    server = _Server(workdir, base_path, "--enable_batching")

    async def scenario():
        held = await _hold(server.port, count, trickle=True)
        await asyncio.sleep(1.0)
        figures = await _normal_client(f"{server.url}/v1/models/{MODEL_NAME}:predict", body)
        for writer in held:
            writer.close()
        return len(held), figures

    try:
        held, (p50, worst, failures) = asyncio.run(scenario())
    finally:
        server.stop()
    _report(
        f"{held} slow clients", {"normal_p50_ms": p50, "normal_max_ms": worst, "failed": failures}
    )
    return [
        common.Row(
            NAME,
            f"normal client beside {held} slow clients: worst latency",
            worst,
            "ms",
            target=f"< {TARGET_NORMAL_CLIENT_MS} ms",
            higher_is_better=False,
        ),
        common.Row(
            NAME,
            f"normal client beside {held} slow clients: failed",
            failures,
            "requests",
            target="0",
        ),
    ]


def _fd_pressure(workdir: str, base_path: str, body: bytes, cap: int) -> list[common.Row]:
    server = _Server(workdir, base_path, f"--rest_api_max_connections={cap}")

    async def scenario():
        held = await _hold(server.port, cap + 500, trickle=False)
        await asyncio.sleep(1.0)
        url = f"{server.url}/v1/models/{MODEL_NAME}:predict"
        started = time.perf_counter()
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                async with session.post(url, data=body) as response:
                    outcome = response.status
        except (TimeoutError, aiohttp.ClientError) as error:
            outcome = type(error).__name__
        answered_ms = 1000 * (time.perf_counter() - started)
        for writer in held:
            writer.close()
        await asyncio.sleep(0.5)
        return len(held), outcome, answered_ms

    try:
        log_before = server.log_size()
        held, outcome, answered_ms = asyncio.run(scenario())
        log_growth = server.log_size() - log_before
    finally:
        server.stop()
    _report(
        f"fd pressure, cap {cap}",
        {
            "opened": held,
            "normal_client": outcome,
            "answered_ms": answered_ms,
            "log_bytes": log_growth,
        },
    )
    return [
        common.Row(
            NAME,
            f"client past the cap of {cap} (with {held} held): answered in",
            answered_ms,
            "ms",
            target=f"< {TARGET_NORMAL_CLIENT_MS} ms ({outcome})",
            higher_is_better=False,
        ),
        common.Row(NAME, f"log written while {held} connections were held", log_growth, "bytes"),
    ]


def _sigterm(workdir: str, base_path: str, bodies: list[bytes]) -> list[common.Row]:
    """32 clients in a closed loop: 16 behind a "balancer" that stops sending once /readyz
    says 503 (checked every 0.5 s, as a load balancer's health check would), 16 that ignore
    readiness and go on until the connection is refused."""
    import aiohttp

    server = _Server(workdir, base_path, "--enable_batching", "--shutdown_drain_seconds=2")
    outcomes = {group: collections.Counter() for group in ("balanced", "naive")}
    url = f"{server.url}/v1/models/{MODEL_NAME}:predict"

    async def clients():
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            ready = asyncio.Event()
            ready.set()
            refused = asyncio.Event()

            async def health_check() -> None:
                while ready.is_set() and not refused.is_set():
                    await asyncio.sleep(0.5)
                    try:
                        async with session.get(f"{server.url}/readyz") as response:
                            if response.status != 200:
                                ready.clear()
                    except aiohttp.ClientError:
                        ready.clear()

            async def worker(index: int, group: str) -> None:
                counts = outcomes[group]
                while not refused.is_set() and (group == "naive" or ready.is_set()):
                    try:
                        async with session.post(url, data=bodies[index % len(bodies)]) as response:
                            await response.read()
                            counts[f"answered {response.status}"] += 1
                    except aiohttp.ClientConnectorError:
                        counts["refused before sending"] += 1
                        refused.set()
                    except (TimeoutError, aiohttp.ClientError):
                        counts["lost"] += 1
                    index += 32

            async def terminate() -> None:
                await asyncio.sleep(3)
                server.process.send_signal(signal.SIGTERM)

            groups = ["balanced"] * 16 + ["naive"] * 16
            await asyncio.gather(
                terminate(),
                health_check(),
                *(worker(index, group) for index, group in enumerate(groups)),
            )

    started = time.perf_counter()
    try:
        asyncio.run(clients())
        code = server.process.wait(timeout=60)
        exit_seconds = time.perf_counter() - started - 3
    finally:
        server.stop()
    figures = {group: dict(counts) for group, counts in outcomes.items()}
    _report("SIGTERM under load", {**figures, "exit_status": code, "exit_s": exit_seconds})
    rows = []
    for group, counts in outcomes.items():
        answered = sum(n for key, n in counts.items() if key.startswith("answered"))
        rows += [
            common.Row(
                NAME, f"SIGTERM under load, {group} clients: answered", answered, "requests"
            ),
            common.Row(
                NAME,
                f"SIGTERM under load, {group} clients: lost",
                counts["lost"],
                "requests",
                target="0" if group == "balanced" else "",
            ),
        ]
    rows.append(common.Row(NAME, "SIGTERM under load: exit after the signal", exit_seconds, "s"))
    return rows


def _pushes(workdir: str, models: dict, bodies: list[bytes], seconds: float) -> list[common.Row]:
    base_path = os.path.join(workdir, "pushed")
    os.makedirs(base_path)
    _push(models[1], base_path, 1)
    server = _Server(workdir, base_path, "--enable_batching")

    async def scenario():
        async def push_later():
            await asyncio.sleep(seconds / 3)
            _push(models[2], base_path, 2)
            await asyncio.sleep(seconds / 3)
            broken = os.path.join(base_path, ".3.tmp")
            os.makedirs(broken)
            with open(os.path.join(broken, "saved_model.pb"), "wb") as file:
                file.write(b"not a SavedModel")
            os.rename(broken, os.path.join(base_path, "3"))

        url = f"{server.url}/v1/models/{MODEL_NAME}:predict"
        result, _ = await asyncio.gather(_closed_loop(url, bodies, 16, seconds), push_later())
        return result

    try:
        result = asyncio.run(scenario())
    finally:
        server.stop()
    _report("versions pushed under load", result)
    return [
        common.Row(
            NAME,
            "versions pushed under load (2, then a broken 3): requests",
            result["requests"],
            "requests",
        ),
        common.Row(
            NAME, "versions pushed under load: failed", result["failed"], "requests", target="0"
        ),
    ]


def _big_requests(workdir: str, base_path: str, body: bytes, count: int) -> list[common.Row]:
    import aiohttp

    big = _body_of([_jpeg(brightness, 256) for brightness in range(count)])
    server = _Server(workdir, base_path, "--enable_batching")
    url = f"{server.url}/v1/models/{MODEL_NAME}:predict"

    async def scenario():
        alone = await _normal_client(url, body)
        stop = asyncio.Event()
        big_answers: collections.Counter = collections.Counter()

        async def big_client() -> None:
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS * 5)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while not stop.is_set():
                    async with session.post(url, data=big) as response:
                        await response.read()
                        big_answers[response.status] += 1

        heavy = asyncio.ensure_future(big_client())
        await asyncio.sleep(2.0)
        beside = await _normal_client(url, body)
        stop.set()
        await heavy
        return alone, beside, big_answers

    try:
        _, before = server.memory_mib()
        alone, beside, big_answers = asyncio.run(scenario())
        time.sleep(2.0)
        peak, after = server.memory_mib()
    finally:
        server.stop()
    figures = {
        "normal_alone_p50_ms": alone[0],
        "normal_beside_p50_ms": beside[0],
        "normal_beside_max_ms": beside[1],
        "normal_failed": beside[2],
        "big_answers": dict(big_answers),
        "rss_before_mib": before,
        "peak_rss_mib": peak,
        "rss_after_mib": after,
    }
    _report(f"requests of {count} 256x256 JPEGs", figures)
    return [
        common.Row(
            NAME,
            f"normal client beside requests of {count} images: p50",
            beside[0],
            "ms",
            "the same client alone",
            alone[0],
            higher_is_better=False,
        ),
        common.Row(
            NAME,
            f"normal client beside requests of {count} images: worst",
            beside[1],
            "ms",
            target=f"< {TARGET_NORMAL_CLIENT_MS} ms",
            higher_is_better=False,
        ),
        common.Row(
            NAME,
            f"requests of {count} images: peak RSS",
            peak,
            "MiB",
            "RSS before",
            before,
            f"< {TARGET_PEAK_RSS_MIB} MiB",
            higher_is_better=False,
        ),
        common.Row(
            NAME,
            f"requests of {count} images: RSS 2 s after",
            after,
            "MiB",
            "RSS before",
            before,
            higher_is_better=False,
        ),
    ]


def _body_of(images: list[bytes]) -> bytes:
    instances = [{"b64": base64.b64encode(image).decode()} for image in images]
    return json.dumps({"instances": instances}).encode()


def run(workdir: str, quick: bool) -> list[common.Row]:
    os.makedirs(workdir, exist_ok=True)
    models = {version: os.path.join(workdir, f"model-{version}") for version in (1, 2)}
    for version, path in models.items():
        _export(path, version)
    base_path = os.path.join(workdir, "base")
    os.makedirs(base_path)
    _push(models[1], base_path, 1)
    bodies = [_body(_jpeg(brightness)) for brightness in range(40, 240, 10)]
    seconds = 10.0 if quick else 60.0
    rows = _soak(workdir, base_path, bodies, seconds)
    rows += _overload(workdir, base_path, bodies, 300 if quick else 1000)
    rows += _slow_clients(workdir, base_path, bodies[0], 300 if quick else 1000)
    rows += _fd_pressure(workdir, base_path, bodies[0], 500 if quick else 2000)
    rows += _sigterm(workdir, base_path, bodies)
    rows += _pushes(workdir, models, bodies, 15.0 if quick else 30.0)
    rows += _big_requests(workdir, base_path, bodies[0], 300 if quick else 1000)
    return rows


if __name__ == "__main__":
    import tempfile

    for row in run(tempfile.mkdtemp(prefix="bench-reliability-"), quick="--quick" in sys.argv):
        print(row)
