"""`happysad serve`: a drop-in for tensorflow_model_server, serving SavedModels over TF Serving's
gRPC and REST APIs.

The command line is tensorflow_model_server's (serving.flags), and so are its config files,
read with protobuf's text_format into TF Serving's own messages: `--model_config_file`
(ModelServerConfig: several models, version policies, labels; re-read every
`--model_config_file_poll_wait_seconds`), `--batching_parameters_file` (BatchingParameters)
and `--monitoring_config_file` (MonitoringConfig):

    happysad serve --port=8500 --rest_api_port=8501 \\
        --model_name=happysad --model_base_path=/models/happysad

As in TF Serving, the ports open once the initial models are loaded, and the server exits
if one of them cannot be loaded. It answers until SIGTERM or SIGINT; then it stops being
ready, stops accepting, finishes the requests in flight (cancelling what still runs after
`--shutdown_timeout_seconds`) and exits. `start_in_thread` runs the same server inside a
Python process (tests, notebooks).
"""

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import signal
import sys
import threading

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import (
    batching,
    config_protos,
    errors,
    flags,
    grpc_api,
    http_server,
    logs,
    prediction_service,
    rest_api,
    servable,
    server_core,
    status,
)
from serving import metrics as metrics_lib

logger = logging.getLogger(__name__)

ANY_PORT = flags.ANY_PORT
# Tasks that never share a batch may wait this many per model thread before 503.
UNBATCHED_QUEUE_PER_THREAD = 4
OWN_LOGGERS = ("serving",)


def read_text_proto(path: str, message, flag: str):
    """Parses a text-format protobuf file into `message` (TF Serving's ParseProtoTextFile).

    Raises:
      errors.UserError: a missing file, or text that is not that message, with protobuf's
        line:column and TF Serving's "Error parsing text-format <message>" wording.
    """
    try:
        with tf.io.gfile.GFile(path, "r") as file:
            text = file.read()
    except (tf.errors.OpError, OSError) as error:
        raise errors.UserError(f"{flag}: cannot read {path}: {error}") from None
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise errors.UserError(
            f"{flag}: Error parsing text-format {message.DESCRIPTOR.full_name}: {error} (in {path})"
        ) from None


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything the flags and config files decide, read and checked once at start."""

    options: flags.ServerOptions
    model_server_config: model_server_config_pb2.ModelServerConfig
    batching: batching.BatchingOptions | None  # None: batching off
    metrics_path: str | None
    session_config: config_pb2.ConfigProto
    channel_arguments: list


def read_config(options: flags.ServerOptions) -> ServerConfig:
    """Reads and checks the config files the flags name.

    Raises:
      errors.UserError: a file that cannot be read or parsed, or values TF Serving refuses.
    """
    if options.model_config_file:
        model_config = read_model_config(options.model_config_file)
    else:
        model_config = server_core.single_model_config(options.model_name, options.model_base_path)
    try:
        server_core.validate_config(model_config)
    except status.ServingError as error:
        raise errors.UserError(error.message) from None
    return ServerConfig(
        options=options,
        model_server_config=model_config,
        batching=_batching_options(options),
        metrics_path=_metrics_path(options),
        session_config=_session_config(options),
        channel_arguments=grpc_api.parse_channel_arguments(options.grpc_channel_arguments),
    )


def read_model_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """A --model_config_file; relative base paths are taken from the working directory.

    Raises:
      errors.UserError: see read_text_proto.
    """
    config = read_text_proto(
        path, model_server_config_pb2.ModelServerConfig(), "--model_config_file"
    )
    for model in config.model_config_list.config:
        if model.base_path and "://" not in model.base_path:
            model.base_path = os.path.abspath(model.base_path)
    return config


def _batching_options(options: flags.ServerOptions) -> batching.BatchingOptions | None:
    if not options.enable_batching:
        return None
    if not options.batching_parameters_file:
        return batching.BatchingOptions()
    parameters = read_text_proto(
        options.batching_parameters_file,
        config_protos.BatchingParameters(),
        "--batching_parameters_file",
    )
    try:
        return batching.BatchingOptions.from_proto(parameters)
    except ValueError as error:
        raise errors.UserError(f"--batching_parameters_file: {error}") from None


def _metrics_path(options: flags.ServerOptions) -> str | None:
    if not options.monitoring_config_file:
        return None
    config = read_text_proto(
        options.monitoring_config_file, config_protos.MonitoringConfig(), "--monitoring_config_file"
    )
    if not config.prometheus_config.enable:
        return None
    path = config.prometheus_config.path or metrics_lib.DEFAULT_PATH
    if not path.startswith("/"):
        raise errors.UserError(f"--monitoring_config_file: path {path!r} must start with /")
    return path


def _session_config(options: flags.ServerOptions) -> config_pb2.ConfigProto:
    """The Session ConfigProto, built as server.cc builds it from the flags."""
    config = config_pb2.ConfigProto()
    if options.tensorflow_session_config_file:
        read_text_proto(
            options.tensorflow_session_config_file, config, "--tensorflow_session_config_file"
        )
    config.gpu_options.per_process_gpu_memory_fraction = options.per_process_gpu_memory_fraction
    intra, inter = options.tensorflow_intra_op_parallelism, options.tensorflow_inter_op_parallelism
    if intra > 0 or inter > 0:
        config.intra_op_parallelism_threads = intra
        config.inter_op_parallelism_threads = inter
    else:
        config.intra_op_parallelism_threads = options.tensorflow_session_parallelism
        config.inter_op_parallelism_threads = options.tensorflow_session_parallelism
    if options.mixed_precision == "bfloat16":
        rewrite = config.graph_options.rewrite_options
        rewrite.auto_mixed_precision_onednn_bfloat16 = rewrite.ON
    return config


class Server:
    """The running pieces: models, batch scheduler, thread pool, gRPC and REST servers."""

    def __init__(self, config: ServerConfig):
        self.config = config
        options = config.options
        self.metrics = metrics_lib.ServerMetrics()
        servable_options = servable.ServableOptions(
            tags=tuple(tag for tag in options.saved_model_tags.split(",") if tag),
            session_config=config.session_config,
            method_name_check=options.enable_signature_method_name_check,
        )
        self.core = server_core.ServerCore(
            server_core.CoreOptions(
                file_system_poll_wait_seconds=options.file_system_poll_wait_seconds,
                max_num_load_retries=options.max_num_load_retries,
                load_retry_interval_micros=options.load_retry_interval_micros,
                allow_version_labels_for_unavailable_models=(
                    options.allow_version_labels_for_unavailable_models
                ),
                enable_model_warmup=options.enable_model_warmup,
                num_request_iterations_for_warmup=options.num_request_iterations_for_warmup,
            ),
            loader=lambda name, version, path: servable.Servable(
                name, version, path, servable_options
            ),
            on_warmup=self._record_warmup,
        )
        batching_options = config.batching or batching.BatchingOptions(
            max_batch_size=1, num_batch_threads=options.rest_api_num_threads
        )
        threads = batching_options.num_batch_threads
        self.executor = concurrent.futures.ThreadPoolExecutor(threads, "model")
        self.service = prediction_service.PredictionService(
            self.core,
            None,
            self.metrics,
            batching_enabled=config.batching is not None,
            allowed_batch_sizes=batching_options.allowed_batch_sizes,
            thread_pool_name=batching_options.thread_pool_name,
            allow_non_finite_inputs=options.allow_non_finite_inputs,
        )
        self.scheduler = batching.BatchScheduler(
            self.executor,
            batching_options,
            unbatched_queue_limit=UNBATCHED_QUEUE_PER_THREAD * threads,
            on_batch=self.service.on_batch,
        )
        self.service.scheduler = self.scheduler
        self.rest = rest_api.RestApi(
            self.service,
            max_request_bytes=options.max_request_bytes,
            timeout_seconds=options.rest_api_timeout_in_ms / 1000,
            body_timeout_seconds=options.rest_api_body_timeout_seconds,
            cors=options.rest_api_enable_cors_support,
            metrics_path=config.metrics_path,
        )
        self.http = http_server.HttpServer(
            self.rest.handle,
            http_server.HttpLimits(
                header_timeout=options.rest_api_header_timeout_seconds,
                body_timeout=options.rest_api_body_timeout_seconds,
                keepalive_timeout=options.rest_api_keepalive_timeout_seconds,
                max_connections=(
                    options.rest_api_max_connections or http_server.default_max_connections()
                ),
            ),
        )
        self.grpc_server = None
        self.grpc_servicers: grpc_api.Servicers | None = None
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._config_poller: threading.Thread | None = None
        self._stopping = threading.Event()

    def _record_warmup(self, path: str, outcome: str, seconds: float, records: int) -> None:
        self.metrics.model_warmup_latency.observe(seconds * 1e6, model_path=path, status=outcome)
        self.metrics.model_warmup_records_read.inc(records, model_path=path, status=outcome)

    # -- addresses -------------------------------------------------------------------------

    @property
    def rest_url(self) -> str | None:
        """http://host:port of the REST API, or None when it is off."""
        if self.rest_port is None:
            return None
        host = self.config.options.rest_api_host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.rest_port}"

    @property
    def grpc_address(self) -> str | None:
        """host:port of the gRPC API over TCP, or None when --port is 0."""
        if self.grpc_port is None:
            return None
        host = self.config.options.grpc_host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.grpc_port}"

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Loads the initial models, then opens the ports (TF Serving's order).

        Raises:
          errors.UserError: a port that cannot be bound or bad gRPC arguments;
          status.ServingError: an initial model that did not become available.
        """
        options = self.config.options
        loop = asyncio.get_running_loop()
        self.core.start_polling()
        await loop.run_in_executor(None, self.core.reload_config, self.config.model_server_config)
        await self._start_grpc()
        await self._start_rest()
        if options.model_config_file and options.model_config_file_poll_wait_seconds > 0:
            self._config_poller = threading.Thread(
                target=self._poll_model_config, name="model-config-poll", daemon=True
            )
            self._config_poller.start()

    async def _start_grpc(self) -> None:
        options = self.config.options
        addresses = []
        if options.port:
            port = 0 if options.port == ANY_PORT else options.port
            addresses.append(f"{options.grpc_host}:{port}")
        if options.grpc_socket_path:
            addresses.append(f"unix:{options.grpc_socket_path}")
        self.grpc_server, self.grpc_servicers, ports = await grpc_api.start_server(
            self.service,
            addresses=addresses,
            channel_arguments=self.config.channel_arguments,
            max_request_bytes=options.max_request_bytes,
            tensor_content=options.enable_serialization_as_tensor_content,
            health_check=options.enable_grpc_healthcheck_service,
        )
        if options.port:
            self.grpc_port = ports[0]
            logger.info("Running gRPC ModelServer at %s ...", self.grpc_address)
        if options.grpc_socket_path:
            logger.info("Running gRPC ModelServer at UNIX socket %s ...", options.grpc_socket_path)

    async def _start_rest(self) -> None:
        options = self.config.options
        if not options.rest_api_port:
            return
        if options.rest_api_port != ANY_PORT and options.rest_api_port == options.port:
            return  # TF Serving skips the REST API then (flags.check warned)
        port = 0 if options.rest_api_port == ANY_PORT else options.rest_api_port
        try:
            self.rest_port = await self.http.start(options.rest_api_host, port)
        except OSError as error:
            raise errors.UserError(
                f"cannot listen on {options.rest_api_host}:{options.rest_api_port}: "
                f"{error.strerror or error}"
            ) from None
        logger.info("Exporting HTTP/REST API at:%s ...", self.rest_url)

    def _poll_model_config(self) -> None:
        """Re-reads --model_config_file and reloads it (Server::PollFilesystemAndReloadConfig)."""
        options = self.config.options
        while not self._stopping.wait(options.model_config_file_poll_wait_seconds):
            try:
                config = read_model_config(options.model_config_file)
            except errors.UserError as error:
                logger.error("Failed to read ModelServerConfig file: %s", error)
                continue
            try:
                self.core.reload_config(config)
            except status.ServingError as error:
                logger.error(
                    "PollFilesystemAndReloadConfig failed to ReloadConfig: %s", error.message
                )

    @property
    def in_flight(self) -> int:
        """Requests being answered, REST and gRPC."""
        return self.rest.in_flight + self.grpc_in_flight()

    def grpc_in_flight(self) -> int:
        return self.grpc_servicers.in_flight if self.grpc_servicers is not None else 0

    async def stop(self, drain: bool = False) -> None:
        """Shuts down within --shutdown_timeout_seconds of the call.

        1. With `drain` (SIGTERM): `/readyz` answers 503 for --shutdown_drain_seconds while
           requests are still served, each response closing its connection.
        2. The REST listener closes (new connections are refused), requests on open
           connections are answered 503, and gRPC stops taking calls; queued batches run
           now; requests in flight finish.
        3. At the deadline, queued work is refused and the sessions are closed, which
           cancels the runs still going; their requests are answered 503; then exit.
        """
        options = self.config.options
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.shutdown_timeout_seconds
        self.rest.draining = True
        if drain and options.shutdown_drain_seconds > 0:
            logger.info(
                "Draining for %g s: not ready, still serving", options.shutdown_drain_seconds
            )
            await asyncio.sleep(min(options.shutdown_drain_seconds, deadline - loop.time()))
        logger.info("Shutting down: finishing requests in flight")
        self.rest.stopping = True
        self.http.stop_accepting()  # new connections are refused; open ones get 503s
        self._stopping.set()
        grpc_stop = None
        if self.grpc_server is not None:
            grpc_stop = asyncio.ensure_future(
                self.grpc_server.stop(grace=max(deadline - loop.time(), 0))
            )
        drained = asyncio.ensure_future(self.scheduler.drain())
        margin = min(1.0, options.shutdown_timeout_seconds / 4)
        while (self.in_flight or not drained.done()) and loop.time() < deadline - margin:
            await asyncio.sleep(0.02)
        if self.in_flight or not drained.done():
            cancelled = self.scheduler.cancel_waiting(status.unavailable(status.SHUTTING_DOWN))
            logger.warning(
                "Shutdown timeout (%g s): cancelling %d queued requests and the runs in progress",
                options.shutdown_timeout_seconds,
                cancelled,
            )
            for loaded in self.core.servables():
                loaded.close()
            while self.in_flight and loop.time() < deadline:
                await asyncio.sleep(0.02)
        await self.http.shutdown(max(deadline - loop.time(), 0.0))
        if grpc_stop is not None:
            await asyncio.wait({grpc_stop}, timeout=max(deadline - loop.time(), 0.01))
        drained.cancel()
        self.core.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def summary(self) -> dict:
        return {
            "rest_url": self.rest_url,
            "grpc_address": self.grpc_address,
            "requests": int(self.metrics.request_count.total()),
            "models": self.core.available(),
        }


async def _serve(server: Server) -> None:
    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(
            signal_number, lambda number=signal_number: (received.append(number), stop.set())
        )
    try:
        startup = asyncio.ensure_future(server.start())
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({startup, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if startup in done:
            startup.result()
            await stopper
        else:
            startup.cancel()
    finally:
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signal_number)
        # SIGTERM (an orchestrator) drains first; SIGINT (Ctrl-C) does not.
        await server.stop(drain=signal.SIGTERM in received)


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    logs.limit_root_handlers()


def run(options: flags.ServerOptions, prog: str = flags.PROG) -> int:
    """Serves until SIGTERM or SIGINT, then ends the process (status 0); returns the exit
    status when the server could not start (see serving.__main__).

    After a shutdown the process exits at once (os._exit): the server has closed all it
    owns, and TensorFlow's and gRPC's teardown at interpreter exit would take seconds more,
    past --shutdown_timeout_seconds.
    """
    _configure_logging()
    try:
        for warning in flags.check(options):
            logger.warning("%s", warning)
        server = Server(read_config(options))
        asyncio.run(_serve(server))
        logger.info("Stopped")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    except errors.UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except status.ServingError as error:
        print(f"{prog}: Failed to start server. Error: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


class ServerHandle:
    """A server running in a background thread: addresses, `.stop()`; a context manager."""

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop, thread: threading.Thread):
        self.server = server
        self._loop = loop
        self._thread = thread
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str | None:
        """The REST API's http://host:port (None when it is off)."""
        return self.server.rest_url

    @property
    def grpc_address(self) -> str | None:
        return self.server.grpc_address

    @property
    def metrics(self) -> metrics_lib.ServerMetrics:
        return self.server.metrics

    @property
    def core(self) -> server_core.ServerCore:
        return self.server.core

    def stop(self) -> dict:
        """Shuts down as on SIGTERM; returns a summary."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join()
        return self.server.summary()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_in_thread(
    options: flags.ServerOptions, startup_timeout_seconds: float = 120.0
) -> ServerHandle:
    """Starts a server on its own event loop in a daemon thread; returns once it serves.

    Use `port=ANY_PORT` / `rest_api_port=ANY_PORT` for free ports; the handle has the ones
    picked. Like the command, it returns only after the initial models are loaded.

    Raises:
      errors.UserError: bad options or config files; status.ServingError: an initial model
        that cannot be loaded; TimeoutError: not serving within the timeout.
    """
    flags.check(options)
    server = Server(read_config(options))
    started = threading.Event()
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    handle = ServerHandle(server, loop, threading.Thread())

    async def run() -> None:
        handle._stop = asyncio.Event()
        try:
            await server.start()
        except BaseException as error:
            failure.append(error)
            started.set()
            await server.stop()
            return
        started.set()
        try:
            await handle._stop.wait()
        finally:
            await server.stop()

    def target() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(run())
        finally:
            loop.close()

    handle._thread = threading.Thread(target=target, name="happysad-serve", daemon=True)
    handle._thread.start()
    if not started.wait(startup_timeout_seconds):
        loop.call_soon_threadsafe(handle._stop.set)
        raise TimeoutError(f"the server did not serve within {startup_timeout_seconds} s")
    if failure:
        handle._thread.join()
        raise failure[0]
    return handle
