"""`happysad serve`'s command line: tensorflow_model_server's flags, names, meanings, defaults.

Every flag of tensorflow_model_server 2.21 (tensorflow_serving/model_servers/main.cc and the
defaults of server.h) is accepted under its own name, so a command line, a Docker CMD or a
Kubernetes manifest written for TF Serving works unchanged. Values may be written
`--flag=value` (the only form TF Serving takes) or `--flag value`; booleans `--flag`,
`--flag=true|false|1|0`.

Three groups of flags:
- implemented: what this server does, as TF Serving does it;
- accepted without effect (TPU, TFLite, XLA, GPU memory, profiler...): a non-default value
  is logged as a warning, because the command line must still start;
- refused when set (TLS/ALTS credentials, platform configs, thread-pool factories, per-model
  batching files): serving without what was asked for would be worse than not starting.

Extras that TF Serving lacks are marked "[happysad]" in --help; the one deliberate
difference in a shared flag's meaning is the listening address: everything listens on
127.0.0.1 unless `--rest_api_host`/`--grpc_host` say otherwise (TF Serving listens on all
interfaces), because this server runs on laptops.
"""

import dataclasses
import os
import sys
from collections.abc import Sequence

import simple_parsing
from simple_parsing import helpers

from serving import errors

PROG = "happysad serve"
EXTRA = "[happysad] "
# A port value that binds any free port (an extra: tests and notebooks use it).
ANY_PORT = -1


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _flag(default, help_text: str):
    return helpers.field(default=default, help=help_text)


@dataclasses.dataclass
class ServerOptions:
    """tensorflow_model_server's flags (TF Serving 2.21), then happysad's extras."""

    # -- gRPC ---------------------------------------------------------------------------
    port: int = _flag(
        8500,
        "TCP port to listen on for gRPC API. Disabled if port set to zero. "
        f"{EXTRA}{ANY_PORT}: any free port (logged).",
    )
    grpc_socket_path: str = _flag(
        "",
        "If non-empty, listen to a UNIX socket for gRPC API on the given path. Can be either "
        "relative or absolute path.",
    )
    grpc_channel_arguments: str = _flag(
        "",
        "A comma separated list of arguments to be passed to the grpc server. (e.g. "
        "grpc.max_connection_age_ms=2000)",
    )
    grpc_max_threads: int = _flag(
        4 * _cpus(), "Max grpc server threads to handle grpc messages. (no effect here)"
    )
    enable_grpc_healthcheck_service: bool = _flag(
        False, "Enable the standard gRPC healthcheck service."
    )
    # -- REST ---------------------------------------------------------------------------
    rest_api_port: int = _flag(
        0,
        "Port to listen on for HTTP/REST API. If set to zero HTTP/REST API will not be "
        "exported. This port must be different than the one specified in --port. "
        f"{EXTRA}{ANY_PORT}: any free port (logged).",
    )
    rest_api_num_threads: int = _flag(
        4 * _cpus(),
        "Number of threads for HTTP/REST API processing (here: model calls run at once "
        "without batching, REST and gRPC together).",
    )
    rest_api_timeout_in_ms: int = _flag(30000, "Timeout for HTTP/REST API calls.")
    rest_api_enable_cors_support: bool = _flag(False, "Enable CORS headers in response")
    # -- models -------------------------------------------------------------------------
    model_name: str = _flag("default", "name of model (ignored if --model_config_file flag is set)")
    model_base_path: str = _flag(
        "",
        "path to export (ignored if --model_config_file flag is set, otherwise required)",
    )
    model_config_file: str = _flag(
        "",
        "If non-empty, read an ascii ModelServerConfig protobuf from the supplied file name, "
        "and serve the models in that file. (If used, --model_name, --model_base_path are "
        "ignored.)",
    )
    model_config_file_poll_wait_seconds: int = _flag(
        0,
        "Interval in seconds between each poll of the filesystem for model_config_file. If "
        "unset or set to zero, poll will be done exactly once and not periodically.",
    )
    file_system_poll_wait_seconds: int = _flag(
        1,
        "Interval in seconds between each poll of the filesystem for new model version. If "
        "set to zero poll will be exactly done once and not periodically.",
    )
    allow_version_labels_for_unavailable_models: bool = _flag(
        False,
        "If true, allows assigning unused version labels to models that are not available yet.",
    )
    max_num_load_retries: int = _flag(
        5,
        "maximum number of times it retries loading a model after the first failure, before "
        "giving up. If set to 0, a load is attempted only once.",
    )
    load_retry_interval_micros: int = _flag(
        60_000_000,
        "The interval, in microseconds, between each servable load retry. If set negative, "
        "it doesn't wait.",
    )
    num_load_threads: int = _flag(
        0,
        "The number of threads in the thread-pool used to load servables. (loads are serial here)",
    )
    num_unload_threads: int = _flag(
        0, "The number of threads in the thread-pool used to unload servables. (no effect here)"
    )
    saved_model_tags: str = _flag(
        "serve", "Comma-separated set of tags corresponding to the meta graph def to load."
    )
    enable_model_warmup: bool = _flag(
        True,
        "Enables model warmup, which triggers lazy initializations (such as TF "
        "optimizations) at load time, to reduce first request latency.",
    )
    num_request_iterations_for_warmup: int = _flag(
        0,
        "Number of times a request is iterated during warmup replay. This value is used "
        "only if > 0.",
    )
    enable_signature_method_name_check: bool = _flag(
        False,
        "Enable method_name check for SignatureDef. Disable this if serving native TF2 "
        "regression/classification models.",
    )
    enable_serialization_as_tensor_content: bool = _flag(
        False, "Enable serialization of predict response as tensor content."
    )
    # -- batching -----------------------------------------------------------------------
    enable_batching: bool = _flag(False, "enable batching")
    batching_parameters_file: str = _flag(
        "",
        "If non-empty, read an ascii BatchingParameters protobuf from the supplied file name "
        "and use the contained values instead of the defaults.",
    )
    enable_per_model_batching_parameters: bool = _flag(
        False,
        "Enables model specific batching params from batching_params.pbtxt in the "
        "SavedModel dir. (not supported here: refused)",
    )
    # -- monitoring ---------------------------------------------------------------------
    monitoring_config_file: str = _flag(
        "",
        "If non-empty, read an ascii MonitoringConfig protobuf from the supplied file name",
    )
    # -- TensorFlow session -------------------------------------------------------------
    tensorflow_session_parallelism: int = _flag(
        0,
        "Number of threads to use for running a Tensorflow session. Auto-configured by default.",
    )
    tensorflow_intra_op_parallelism: int = _flag(
        0,
        "Number of threads to use to parallelize the execution of an individual op. "
        "Auto-configured by default.",
    )
    tensorflow_inter_op_parallelism: int = _flag(
        0,
        "Controls the number of operators that can be executed simultaneously. "
        "Auto-configured by default.",
    )
    tensorflow_session_config_file: str = _flag(
        "",
        "If non-empty, read an ascii TensorFlow Session ConfigProto protobuf from the "
        "supplied file name.",
    )
    per_process_gpu_memory_fraction: float = _flag(
        0.0, "Fraction that each process occupies of the GPU memory space (0: automatic)."
    )
    mixed_precision: str = _flag("", "specify mixed_precision mode (bfloat16)")
    xla_cpu_compilation_enabled: bool = _flag(
        False, "EXPERIMENTAL; Enable XLA:CPU JIT (default is disabled). (no effect here)"
    )
    xla_gpu_compilation_enabled: bool = _flag(
        False, "EXPERIMENTAL; Enable XLA:CPU and XLA:GPU JIT. (no effect here)"
    )
    # -- accepted without effect, or refused --------------------------------------------
    flush_filesystem_caches: bool = _flag(
        True, "Flush filesystem caches after the initial load. (no effect here)"
    )
    remove_unused_fields_from_bundle_metagraph: bool = _flag(
        True, "Removes unused fields from MetaGraphDef proto message. (no effect here)"
    )
    enable_profiler: bool = _flag(True, "Enable profiler service. (no effect here)")
    prefer_tflite_model: bool = _flag(
        False, "EXPERIMENTAL; Prefer model.tflite to saved_model.pb. (no effect here)"
    )
    num_tflite_pools: int = _flag(_cpus(), "EXPERIMENTAL; TFLite pools. (no effect here)")
    num_tflite_interpreters_per_pool: int = _flag(
        1, "EXPERIMENTAL; TFLite interpreters per pool. (no effect here)"
    )
    skip_initialize_tpu: bool = _flag(False, "Whether to skip auto initializing TPU. (no effect)")
    use_alts_credentials: bool = _flag(False, "Use Google ALTS credentials (refused here)")
    ssl_config_file: str = _flag(
        "", "Read an ascii SSLConfig protobuf and set up a secure gRPC channel (refused here)"
    )
    platform_config_file: str = _flag("", "Read an ascii PlatformConfigMap protobuf (refused here)")
    thread_pool_factory_config_file: str = _flag(
        "", "Read an ascii ThreadPoolConfig protobuf (refused here)"
    )
    version: bool = _flag(False, "Display version")
    # -- happysad's extras --------------------------------------------------------------
    rest_api_host: str = _flag(
        "127.0.0.1",
        EXTRA + "address the REST API listens on (TF Serving: all interfaces); 0.0.0.0 "
        "serves other machines too",
    )
    grpc_host: str = _flag(
        "127.0.0.1",
        EXTRA + "address the gRPC API listens on (TF Serving: all interfaces); 0.0.0.0 "
        "serves other machines too",
    )
    max_request_bytes: int = _flag(
        64 * 1024 * 1024,
        EXTRA + "largest request accepted, REST body (413 above) or gRPC message "
        "(RESOURCE_EXHAUSTED)",
    )
    shutdown_timeout_seconds: float = _flag(
        30.0,
        EXTRA + "on SIGTERM or SIGINT, the longest the server takes to exit; requests still "
        "running then are cancelled",
    )
    shutdown_drain_seconds: float = _flag(
        5.0,
        EXTRA + "on SIGTERM, how long /readyz answers 503 while requests are still served "
        "(responses then close their connections) before new requests are refused; "
        "SIGINT skips it",
    )
    rest_api_header_timeout_seconds: float = _flag(
        60.0,
        EXTRA + "longest a request's headers may take to arrive after its first byte (408)",
    )
    rest_api_body_timeout_seconds: float = _flag(
        60.0, EXTRA + "longest wait between two reads of a request body (408)"
    )
    rest_api_keepalive_timeout_seconds: float = _flag(
        75.0, EXTRA + "an idle connection (or one that sends nothing) is closed after it"
    )
    rest_api_max_connections: int = _flag(
        0,
        EXTRA + "most open REST connections; one more is answered 503 and closed (0: the "
        "open-file limit, raised to its hard limit, less 512, at most 10000)",
    )
    allow_non_finite_inputs: bool = _flag(
        False,
        EXTRA + "let NaN and Infinity reach float inputs (TF Serving does; here they are a "
        "400 by default: a NaN pixel makes a NaN probability)",
    )

    def __post_init__(self):
        if self.model_base_path and "://" not in self.model_base_path:
            self.model_base_path = os.path.abspath(self.model_base_path)


# Flags accepted for compatibility that change nothing here; a non-default value is logged.
NO_EFFECT = (
    "grpc_max_threads",
    "num_load_threads",
    "num_unload_threads",
    "flush_filesystem_caches",
    "remove_unused_fields_from_bundle_metagraph",
    "enable_profiler",
    "prefer_tflite_model",
    "num_tflite_pools",
    "num_tflite_interpreters_per_pool",
    "skip_initialize_tpu",
    "xla_cpu_compilation_enabled",
    "xla_gpu_compilation_enabled",
)
# Flags that would change what is served or how securely: refused when set.
REFUSED = (
    "use_alts_credentials",
    "ssl_config_file",
    "platform_config_file",
    "thread_pool_factory_config_file",
    "enable_per_model_batching_parameters",
)


class _Parser(simple_parsing.ArgumentParser):
    """Errors as one line on stderr and exit status 2, as every happysad command does."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse(argv: Sequence[str], prog: str = PROG) -> ServerOptions:
    """ServerOptions from a command line (without the program name).

    `--help` prints the flags and exits 0; an unknown flag or a bad value prints one line
    and exits 2 (SystemExit).
    """
    parser = _Parser(
        prog=prog,
        description="Serves SavedModels over TensorFlow Serving's gRPC and REST APIs; flags "
        "are tensorflow_model_server's ([happysad] marks extras).",
        allow_abbrev=False,
        add_option_string_dash_variants=simple_parsing.DashVariant.UNDERSCORE,
        add_config_path_arg=False,
    )
    parser.add_arguments(ServerOptions, dest="options")
    return parser.parse_args(list(argv)).options


def check(options: ServerOptions) -> list[str]:
    """Checks the flags as TF Serving's BuildAndStart does; returns warnings to log.

    Raises:
      errors.UserError: one line, for flags TF Serving refuses or this server cannot honour.
    """
    defaults = ServerOptions()
    refused = [name for name in REFUSED if getattr(options, name) != getattr(defaults, name)]
    if refused:
        raise errors.UserError(
            f"--{refused[0]} is not supported by happysad serve (use tensorflow_model_server)"
        )
    if options.port == 0 and not options.grpc_socket_path:
        raise errors.UserError(
            "At least one of server_options.grpc_port or server_options.grpc_socket_path "
            "must be set."
        )
    if not options.model_base_path and not options.model_config_file:
        raise errors.UserError(
            "Both server_options.model_base_path and server_options.model_config_file are empty!"
        )
    if options.batching_parameters_file and not options.enable_batching:
        raise errors.UserError(
            "server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true."
        )
    if (
        options.tensorflow_intra_op_parallelism > 0
        and options.tensorflow_inter_op_parallelism > 0
        and options.tensorflow_session_parallelism > 0
    ):
        raise errors.UserError(
            "Either configure server_options.tensorflow_session_parallelism or "
            "(server_options.tensorflow_intra_op_parallelism, "
            "server_options.tensorflow_inter_op_parallelism) separately. You cannot "
            "configure all."
        )
    if options.mixed_precision not in ("", "bfloat16"):
        raise errors.UserError(f"--mixed_precision={options.mixed_precision}: only bfloat16")
    ranges = {
        "port": ANY_PORT <= options.port <= 65535,
        "rest_api_port": ANY_PORT <= options.rest_api_port <= 65535,
        "rest_api_num_threads": options.rest_api_num_threads >= 1,
        "rest_api_timeout_in_ms": options.rest_api_timeout_in_ms >= 0,
        "max_num_load_retries": options.max_num_load_retries >= 0,
        "max_request_bytes": options.max_request_bytes >= 1,
        "shutdown_timeout_seconds": options.shutdown_timeout_seconds >= 0,
        "shutdown_drain_seconds": options.shutdown_drain_seconds >= 0,
        "rest_api_header_timeout_seconds": options.rest_api_header_timeout_seconds > 0,
        "rest_api_body_timeout_seconds": options.rest_api_body_timeout_seconds > 0,
        "rest_api_keepalive_timeout_seconds": options.rest_api_keepalive_timeout_seconds > 0,
        "rest_api_max_connections": options.rest_api_max_connections >= 0,
    }
    for name, valid in ranges.items():
        if not valid:
            raise errors.UserError(f"--{name} is out of range: {getattr(options, name)}")
    warnings = [
        f"--{name}={getattr(options, name)} has no effect in happysad serve"
        for name in NO_EFFECT
        if getattr(options, name) != getattr(defaults, name)
    ]
    if options.rest_api_port not in (0, ANY_PORT) and options.rest_api_port == options.port:
        warnings.append(
            "server_options.http_port cannot be same as grpc_port. Please use a different "
            "port for HTTP/REST API. Skipped exporting HTTP/REST API."
        )
    return warnings


def print_version(file=sys.stdout) -> None:
    """What `--version` prints: TF Serving's two lines, naming this server."""
    import tensorflow as tf

    from serving import __version__

    print(f"TensorFlow ModelServer: happysad serve {__version__} (TF Serving 2.21 API)", file=file)
    print(f"TensorFlow Library: {tf.__version__}", file=file)
