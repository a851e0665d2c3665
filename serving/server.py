"""`happysad serve`: TensorFlow Serving's REST API for the SavedModels under a base path.

Flags carry tensorflow_model_server's names, so a command line (or a Kubernetes manifest)
moves between this server and the real `tensorflow/serving` image unchanged:

    happysad serve --model_name=happysad --model_base_path=W/serving/happysad \\
        --rest_api_port=8501 --enable_batching --max_batch_size=32

The server answers until SIGTERM or SIGINT; then it reports not-ready, stops accepting
connections, finishes the requests in flight and exits. `start_in_thread` runs the same
server inside a Python process (tests, notebooks, demos).
"""

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import signal
import threading

import tensorflow as tf
from aiohttp import web

from pipeline import errors
from serving import batching, model_manager, rest_api
from serving import metrics as metrics_lib

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """How to serve one model; the flags are tensorflow_model_server's where it has them."""

    model_base_path: str = dataclasses.field(
        metadata={
            "help": "directory of numbered SavedModel versions (local, gs://, s3://)",
            "flags": ("--model_base_path",),
        }
    )
    model_name: str = dataclasses.field(
        default="default",
        metadata={"help": "name in the URL: /v1/models/<model_name>", "flags": ("--model_name",)},
    )
    rest_api_port: int = dataclasses.field(
        default=8501,
        metadata={"help": "HTTP port (0 picks a free one)", "flags": ("--rest_api_port",)},
    )
    rest_api_host: str = dataclasses.field(
        default="127.0.0.1",
        metadata={
            "help": "address to bind; 0.0.0.0 serves other machines too (do so explicitly)",
            "flags": ("--rest_api_host",),
        },
    )
    rest_api_num_threads: int = dataclasses.field(
        default=0,
        metadata={
            "help": "threads that run the model when batching is off (0: one per CPU)",
            "flags": ("--rest_api_num_threads",),
        },
    )
    rest_api_timeout_in_ms: int = dataclasses.field(
        default=30000,
        metadata={
            "help": "deadline of a request; past it the answer is 504",
            "flags": ("--rest_api_timeout_in_ms",),
        },
    )
    file_system_poll_wait_seconds: float = dataclasses.field(
        default=1.0,
        metadata={
            "help": "seconds between scans of the base path for new or removed versions "
            "(0: scan once at start)",
            "flags": ("--file_system_poll_wait_seconds",),
        },
    )
    model_version_policy: str = dataclasses.field(
        default=model_manager.LATEST_POLICY,
        metadata={
            "help": "which versions to load: the latest --num_versions, or all",
            "flags": ("--model_version_policy",),
            "choices": (model_manager.LATEST_POLICY, model_manager.ALL_POLICY),
        },
    )
    num_versions: int = dataclasses.field(
        default=1,
        metadata={
            "help": "with the latest policy, how many of the newest versions to keep loaded",
            "flags": ("--num_versions",),
        },
    )
    max_num_load_retries: int = dataclasses.field(
        default=5,
        metadata={
            "help": "times a version that fails to load is retried on later scans",
            "flags": ("--max_num_load_retries",),
        },
    )
    enable_batching: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "run concurrent requests for the same signature as one batch",
            "flags": ("--enable_batching",),
        },
    )
    max_batch_size: int = dataclasses.field(
        default=32,
        metadata={"help": "most items in one batch", "flags": ("--max_batch_size",)},
    )
    batch_timeout_micros: int = dataclasses.field(
        default=0,
        metadata={
            "help": "longest a batch waits for more requests while a batch thread is free "
            "(0, TF Serving's default: batches fill only while every thread is busy)",
            "flags": ("--batch_timeout_micros",),
        },
    )
    num_batch_threads: int = dataclasses.field(
        default=0,
        metadata={
            "help": "batches run at the same time (0: half the CPUs, at least 1)",
            "flags": ("--num_batch_threads",),
        },
    )
    max_enqueued_batches: int = dataclasses.field(
        default=64,
        metadata={
            "help": "batches (requests, without batching) allowed to wait; beyond, 503",
            "flags": ("--max_enqueued_batches",),
        },
    )
    max_request_bytes: int = dataclasses.field(
        default=64 * 1024 * 1024,
        metadata={
            "help": "largest request body accepted (413 above)",
            "flags": ("--max_request_bytes",),
        },
    )
    shutdown_timeout_seconds: float = dataclasses.field(
        default=30.0,
        metadata={
            "help": "on SIGTERM, how long requests in flight may take to finish",
            "flags": ("--shutdown_timeout_seconds",),
        },
    )

    def __post_init__(self):
        checks = {
            "--rest_api_port": 0 <= self.rest_api_port <= 65535,
            "--rest_api_num_threads": self.rest_api_num_threads >= 0,
            "--rest_api_timeout_in_ms": self.rest_api_timeout_in_ms > 0,
            "--num_versions": self.num_versions >= 1,
            "--max_num_load_retries": self.max_num_load_retries >= 0,
            "--max_batch_size": self.max_batch_size >= 1,
            "--batch_timeout_micros": self.batch_timeout_micros >= 0,
            "--num_batch_threads": self.num_batch_threads >= 0,
            "--max_enqueued_batches": self.max_enqueued_batches >= 1,
            "--max_request_bytes": self.max_request_bytes >= 1,
            "--shutdown_timeout_seconds": self.shutdown_timeout_seconds >= 0,
        }
        for flag, valid in checks.items():
            if not valid:
                raise errors.UserError(f"{flag} is out of range: {getattr(self, flag[2:])}")
        if not self.model_name or "/" in self.model_name or ":" in self.model_name:
            raise errors.UserError(
                f"--model_name {self.model_name!r} must be non-empty, without '/' or ':'"
            )


class _Server:
    """The running pieces: model manager, batch scheduler, thread pool and HTTP site."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = metrics_lib.ServerMetrics()
        self.manager = model_manager.ModelManager(
            config.model_name,
            config.model_base_path,
            version_policy=config.model_version_policy,
            num_versions=config.num_versions,
            max_num_load_retries=config.max_num_load_retries,
            metrics=self.metrics,
        )
        cpus = os.cpu_count() or 1
        if config.enable_batching:
            threads = config.num_batch_threads or max(1, cpus // 2)
        else:
            threads = config.rest_api_num_threads or cpus
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, "model")
        self.scheduler = batching.BatchScheduler(
            self.executor,
            max_batch_size=config.max_batch_size if config.enable_batching else 1,
            batch_timeout_micros=config.batch_timeout_micros if config.enable_batching else 0,
            num_batch_threads=threads,
            max_enqueued_batches=config.max_enqueued_batches,
            on_batch=self._record_batch,
        )
        self.api = rest_api.RestApi(
            self.manager,
            self.scheduler,
            self.metrics,
            max_request_bytes=config.max_request_bytes,
            request_timeout_seconds=config.rest_api_timeout_in_ms / 1000,
            batching_enabled=config.enable_batching,
        )
        self.runner: web.AppRunner | None = None
        self.port = config.rest_api_port

    def _record_batch(self, stats: batching.BatchStats) -> None:
        name = self.config.model_name
        self.metrics.batch_size.observe(stats.size, model_name=name)
        self.metrics.batch_queuing_latency.observe(stats.queue_seconds * 1e6, model_name=name)

    @property
    def url(self) -> str:
        host = self.config.rest_api_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=self.config.max_request_bytes)
        self.api.add_routes(app)
        self.runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=self.config.shutdown_timeout_seconds
        )
        await self.runner.setup()
        site = web.TCPSite(
            self.runner,
            self.config.rest_api_host,
            self.config.rest_api_port,
            shutdown_timeout=self.config.shutdown_timeout_seconds,
        )
        try:
            await site.start()
        except OSError as error:
            await self.runner.cleanup()
            raise errors.UserError(
                f"cannot listen on {self.config.rest_api_host}:{self.config.rest_api_port}: "
                f"{error.strerror or error}"
            ) from None
        self.port = self.runner.addresses[0][1]  # the one picked, for port 0
        self.manager.start(self.config.file_system_poll_wait_seconds)
        logger.info(
            "Serving model %s from %s at %s/v1/models/%s",
            self.config.model_name,
            self.config.model_base_path,
            self.url,
            self.config.model_name,
        )

    async def stop(self) -> None:
        """Not-ready first, then stop accepting, finish in-flight requests, stop polling."""
        logger.info("Shutting down: finishing requests in flight")
        self.api.draining = True
        # Queued batches run now instead of waiting out their timeout, while aiohttp stops
        # listening and waits for every handler that has its request to answer.
        cleanup = self.runner.cleanup() if self.runner is not None else asyncio.sleep(0)
        await asyncio.gather(cleanup, self.scheduler.drain())
        self.manager.stop()
        self.executor.shutdown(wait=True)

    def summary(self) -> dict:
        requests = self.metrics.request_count.total()
        return {
            "url": self.url,
            "model_name": self.config.model_name,
            "model_base_path": self.config.model_base_path,
            "requests": int(requests),
            "available_versions": self.manager.available_versions,
        }


def _check_base_path(path: str) -> None:
    if not tf.io.gfile.isdir(path):
        raise errors.UserError(
            f"--model_base_path {path} is not a directory: it should hold numbered SavedModel "
            f"versions (e.g. {path}/1/saved_model.pb)"
        )


def run(config: ServeConfig) -> dict:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully; returns a summary."""
    _check_base_path(config.model_base_path)
    server = _Server(config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stop.set)
        await server.start()
        try:
            await stop.wait()
        finally:
            for signal_number in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signal_number)
            await server.stop()

    asyncio.run(main())
    return server.summary()


class ServerHandle:
    """A server running in a background thread: `.url`, `.stop()`; also a context manager."""

    def __init__(self, server: _Server, loop: asyncio.AbstractEventLoop, thread: threading.Thread):
        self._server = server
        self._loop = loop
        self._thread = thread
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def metrics(self) -> metrics_lib.ServerMetrics:
        return self._server.metrics

    @property
    def manager(self) -> model_manager.ModelManager:
        return self._server.manager

    def stop(self) -> dict:
        """Shuts down as on SIGTERM (in-flight requests finish); returns the summary."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join()
        return self._server.summary()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_in_thread(config: ServeConfig, startup_timeout_seconds: float = 60.0) -> ServerHandle:
    """Starts the server on its own event loop in a daemon thread and returns once it listens.

    Use port 0 for a free port; the handle's `.url` has the one picked. The model loads in
    the background: wait with `serving.client.wait_until_ready(handle.url, model_name)`.
    """
    _check_base_path(config.model_base_path)
    server = _Server(config)
    started = threading.Event()
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    handle: ServerHandle

    async def main() -> None:
        handle._stop = asyncio.Event()
        try:
            await server.start()
        except BaseException as error:
            failure.append(error)
            started.set()
            return
        started.set()
        try:
            await handle._stop.wait()
        finally:
            await server.stop()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name=f"serve-{config.model_name}", daemon=True)
    handle = ServerHandle(server, loop, thread)
    thread.start()
    if not started.wait(startup_timeout_seconds):
        raise TimeoutError(f"the server did not start within {startup_timeout_seconds} s")
    if failure:
        thread.join()
        raise failure[0]
    return handle
