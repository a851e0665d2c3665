"""The models a server serves, their versions and labels: TF Serving's ServerCore in small.

A `ModelServerConfig` (tensorflow_serving/config/model_server_config.proto, from
`--model_config_file` or built from `--model_name`/`--model_base_path`) lists models; each
has a base path whose numbered subdirectories are versions, a version policy (`latest`
N, `all`, or `specific` versions) and version labels. As in TF Serving
(model_servers/server_core.cc, sources/storage_path/file_system_storage_path_source.cc,
core/aspired_versions_manager.cc with the availability-preserving policy):

- a version directory keeps its own name: `00000123/` is version 123, loaded from
  `00000123/`; a directory without saved_model.pb yet (still being copied) is skipped;
- the base paths are polled every `file_system_poll_wait_seconds` (0: once);
- a new version is loaded and warmed up before it serves, and the old one is unloaded only
  once an aspired version is AVAILABLE, so a push causes no failed request; a failed load
  is retried `max_num_load_retries` times, `load_retry_interval_micros` apart;
- labels may only point at AVAILABLE versions, unless
  `--allow_version_labels_for_unavailable_models` allows a *new* label on a version that
  is not loaded yet; a config whose labels break this is refused as a whole;
- a reloaded config serves exactly its models: models no longer listed are unloaded.

Requests that already hold an unloaded version finish on it.
"""

import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Callable

import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import file_system_storage_path_source_pb2, model_server_config_pb2

from serving import prediction_log, status
from serving import servable as servable_lib

logger = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
START, LOADING, AVAILABLE, UNLOADING, END = (
    State.START,
    State.LOADING,
    State.AVAILABLE,
    State.UNLOADING,
    State.END,
)
VersionPolicy = (
    file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy
)
TENSORFLOW_PLATFORM = "tensorflow"
_VERSION_NAME = re.compile(r"[0-9]{1,19}")
INT64_MAX = 2**63 - 1


@dataclasses.dataclass
class VersionState:
    """One version's place in its life cycle, as GetModelStatus reports it."""

    version: int
    path: str
    state: int = START
    error: status.ServingError | None = None
    servable: servable_lib.Servable | None = None
    failed: bool = False  # gave up after the retries; not retried while on disk

    def to_proto(self) -> get_model_status_pb2.ModelVersionStatus:
        proto = get_model_status_pb2.ModelVersionStatus(version=self.version, state=self.state)
        proto.status.SetInParent()  # TF Serving always writes it: OK and "" when healthy
        if self.error is not None:
            proto.status.error_code = int(self.error.code)
            proto.status.error_message = self.error.message
        return proto


@dataclasses.dataclass
class ModelState:
    """A model of the config: where its versions are, which to serve, and its labels."""

    name: str
    base_path: str
    policy: VersionPolicy
    labels: dict[str, int] = dataclasses.field(default_factory=dict)
    versions: dict[int, VersionState] = dataclasses.field(default_factory=dict)
    listed: bool = True  # in the current config
    on_disk: dict[int, str] = dataclasses.field(default_factory=dict)  # the last listing
    warned_empty: bool = False


@dataclasses.dataclass(frozen=True)
class CoreOptions:
    """tensorflow_model_server's model-management flags."""

    file_system_poll_wait_seconds: float = 1.0
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    allow_version_labels_for_unavailable_models: bool = False
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0


Loader = Callable[[str, int, str], servable_lib.Servable]
WarmupObserver = Callable[[str, str, float, int], None]  # path, status, seconds, records


def single_model_config(
    model_name: str, model_base_path: str
) -> model_server_config_pb2.ModelServerConfig:
    """The config TF Serving builds from --model_name and --model_base_path."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = model_base_path
    model.model_platform = TENSORFLOW_PLATFORM
    return config


def list_versions(base_path: str) -> dict[int, str]:
    """Version number → directory name of the SavedModels under `base_path`.

    Names are the digits TF Serving parses (`00000123` is 123 and keeps its name); a
    directory without saved_model.pb yet is not a version yet. Of two names for one number,
    the last in sorted order wins, with a warning (TF Serving picks one too).
    """
    try:
        names = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(base_path))
    except tf.errors.NotFoundError:
        return {}
    versions: dict[int, str] = {}
    for name in names:
        if not _VERSION_NAME.fullmatch(name) or int(name) > INT64_MAX:
            continue
        if not servable_lib.is_saved_model_dir(os.path.join(base_path, name)):
            continue
        version = int(name)
        if version in versions:
            logger.warning(
                "Duplicate version directories detected. Version %d will be loaded from %s, "
                "%s will be ignored.",
                version,
                name,
                versions[version],
            )
        versions[version] = name
    return versions


def validate_config(config: model_server_config_pb2.ModelServerConfig) -> None:
    """TF Serving's checks of a ModelConfigList (server_core.cc), with its messages.

    Raises:
      status.ServingError: INVALID_ARGUMENT for a config TF Serving refuses.
    """
    if config.WhichOneof("config") != "model_config_list":
        raise status.invalid_argument(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
            "ModelConfigList is currently supported"
        )
    names = set()
    for model in config.model_config_list.config:
        if model.name in names:
            raise status.invalid_argument(
                f"Illegal to list model {model.name} multiple times in config list"
            )
        names.add(model.name)
        if not model.name or "/" in model.name or ":" in model.name:
            raise status.invalid_argument(
                f"Model name {model.name!r} must be non-empty, without '/' or ':'"
            )
        platform = model.model_platform or (
            TENSORFLOW_PLATFORM if model.model_type == model_server_config_pb2.TENSORFLOW else ""
        )
        if platform != TENSORFLOW_PLATFORM:
            raise status.invalid_argument(
                f"Model {model.name} requests unsupported platform {platform or '(none)'}"
                if platform
                else "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                f"ModelServerConfig::model_platform, model name is {model.name}"
            )


class ServerCore:
    """Keeps the aspired versions of every configured model loaded; resolves requests.

    Args:
      options: the model-management flags.
      loader: builds a Servable from (model name, version, path).
      on_warmup: called after each warm-up with (path, status name, seconds, records).
    """

    def __init__(
        self,
        options: CoreOptions,
        loader: Loader,
        on_warmup: WarmupObserver | None = None,
    ):
        self.options = options
        self._loader = loader
        self._on_warmup = on_warmup
        self._models: dict[str, ModelState] = {}
        self._config: model_server_config_pb2.ModelServerConfig | None = None
        self._lock = threading.Lock()  # guards the states requests read
        self._poll_lock = threading.RLock()  # one poll or reload at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what requests see ---------------------------------------------------------------

    def servable(
        self, model_name: str, version: int | None = None, label: str | None = None
    ) -> servable_lib.Servable:
        """The servable for a request: a version, a label's version, or the latest AVAILABLE.

        Raises:
          status.ServingError: INVALID_ARGUMENT for an empty name or an unknown label,
            NOT_FOUND with TF Serving's message when nothing serves the request.
        """
        if not model_name:
            raise status.invalid_argument("ModelSpec has no name specified.")
        with self._lock:
            model = self._models.get(model_name)
            if label is not None:
                if model is None or not model.listed or label not in model.labels:
                    raise status.invalid_argument(f"Unrecognized servable version label: {label}")
                version = model.labels[label]
            if model is not None and model.listed:
                if version is None:
                    available = [s for s in model.versions.values() if s.state == AVAILABLE]
                    if available:
                        return max(available, key=lambda s: s.version).servable
                else:
                    state = model.versions.get(version)
                    if state is not None and state.state == AVAILABLE:
                        return state.servable
        request = (
            f"Latest({model_name})" if version is None else f"Specific({model_name}, {version})"
        )
        raise status.not_found(f"Servable not found for request: {request}")

    def status(
        self, model_name: str, version: int | None = None
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatusResponse: one version, or every version known, newest first.

        Raises:
          status.ServingError: NOT_FOUND with TF Serving's messages.
        """
        response = get_model_status_pb2.GetModelStatusResponse()
        with self._lock:
            model = self._models.get(model_name)
            states = dict(model.versions) if model is not None else {}
            if version is not None:
                if version not in states:
                    raise status.not_found(
                        f"Could not find version {version} of model {model_name}"
                    )
                response.model_version_status.append(states[version].to_proto())
                return response
            if not states:
                raise status.not_found(f"Could not find any versions of model {model_name}")
            for number in sorted(states, reverse=True):
                response.model_version_status.append(states[number].to_proto())
        return response

    def available(self) -> dict[str, list[int]]:
        """Model name → its AVAILABLE versions, newest first (what readiness reports)."""
        with self._lock:
            return {
                name: sorted(
                    (s.version for s in model.versions.values() if s.state == AVAILABLE),
                    reverse=True,
                )
                for name, model in self._models.items()
                if model.listed
            }

    def serves(self, model_name: str) -> bool:
        """Whether `model_name` is a model of the current config."""
        model = self._models.get(model_name)
        return model is not None and model.listed

    def servables(self) -> list[servable_lib.Servable]:
        """Every loaded servable (to close them at shutdown)."""
        with self._lock:
            return [
                state.servable
                for model in self._models.values()
                for state in model.versions.values()
                if state.servable is not None
            ]

    @property
    def config(self) -> model_server_config_pb2.ModelServerConfig | None:
        return self._config

    # -- configuration -------------------------------------------------------------------

    def reload_config(
        self, config: model_server_config_pb2.ModelServerConfig, wait: bool = True
    ) -> None:
        """Serves exactly the models of `config` (ServerCore::ReloadConfig).

        New models are polled and loaded now; with `wait`, returns once each new model has
        an AVAILABLE version. Removed models are unloaded; labels are replaced.

        Raises:
          status.ServingError: INVALID_ARGUMENT for an invalid config, FAILED_PRECONDITION
            for labels on versions that are not available (nothing changes then), UNKNOWN
            when a new model does not become available (TF Serving's message).
        """
        validate_config(config)
        with self._poll_lock:
            if self._config is not None and self._config == config:
                return
            labels = self._checked_labels(config)
            new_models = []
            with self._lock:
                listed = set()
                for model_config in config.model_config_list.config:
                    listed.add(model_config.name)
                    model = self._models.get(model_config.name)
                    if model is None or not model.listed:
                        new_models.append(model_config.name)
                    if model is None:
                        model = self._models[model_config.name] = ModelState(
                            model_config.name,
                            model_config.base_path,
                            model_config.model_version_policy,
                        )
                    model.base_path = model_config.base_path
                    model.policy = model_config.model_version_policy
                    model.listed = True
                    model.labels = labels.get(model_config.name, {})
                for name, model in self._models.items():
                    if name not in listed:
                        model.listed = False
                        model.labels = {}
                self._config = config
            logger.info("Adding/updating models.")
            self.poll_once()
        # Outside the poll lock: the polling thread must go on loading while this waits.
        if wait:
            self.wait_until_available(new_models)
        logger.info("Finished adding/updating models")

    def _checked_labels(
        self, config: model_server_config_pb2.ModelServerConfig
    ) -> dict[str, dict[str, int]]:
        """The label map of `config`, checked as UpdateModelVersionLabelMap checks it."""
        labels: dict[str, dict[str, int]] = {}
        with self._lock:
            for model_config in config.model_config_list.config:
                current = self._models.get(model_config.name)
                for label, version in model_config.version_labels.items():
                    allowed = False
                    if self.options.allow_version_labels_for_unavailable_models:
                        existing = current.labels.get(label) if current is not None else None
                        allowed = existing is None or existing == version
                    state = current.versions.get(version) if current is not None else None
                    if not allowed and (state is None or state.state != AVAILABLE):
                        raise status.failed_precondition(
                            f"Request to assign label to version {version} of model "
                            f"{model_config.name}, which is not currently available for "
                            "inference"
                        )
                    labels.setdefault(model_config.name, {})[label] = version
        return labels

    def wait_until_available(self, model_names: list[str], timeout: float | None = None) -> None:
        """Blocks until each model has an AVAILABLE version (ServerCore's initial wait).

        A model whose aspired versions all failed to load ends the wait with an error; a
        model without versions yet keeps it waiting, as in TF Serving.

        Raises:
          status.ServingError: UNKNOWN, TF Serving's message, when a model failed;
            DEADLINE_EXCEEDED when `timeout` seconds passed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            failed = []
            waiting = False
            with self._lock:
                for name in model_names:
                    model = self._models[name]
                    states = list(model.versions.values())
                    if any(s.state == AVAILABLE for s in states):
                        continue
                    aspired = self._aspired(model, model.on_disk)
                    done = [s for s in states if s.version in aspired and s.failed]
                    if aspired and len(done) == len(aspired):
                        failed += [(name, state) for state in done]
                    else:
                        waiting = True
            if failed:
                details = ", ".join(
                    f"{{{{name: {name} version: {state.version}}} due to error: "
                    f"{state.error.code.name}: {state.error.message}}}"
                    for name, state in failed
                )
                raise status.ServingError(
                    status.Code.UNKNOWN,
                    f"{len(failed)} model(s) did not become available: {{{details}}}",
                )
            if not waiting:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise status.deadline_exceeded(
                    f"models {', '.join(model_names)} did not become available in {timeout} s"
                )
            if self._stop.wait(0.05):
                raise status.unavailable("The server is shutting down")

    # -- polling -------------------------------------------------------------------------

    def start_polling(self) -> None:
        """Polls every file_system_poll_wait_seconds in a daemon thread (0: never again)."""
        period = self.options.file_system_poll_wait_seconds
        if period <= 0:
            return

        def loop() -> None:
            while not self._stop.wait(period):
                try:
                    self.poll_once()
                except Exception:  # a storage hiccup must not stop future polls
                    logger.exception("Polling the model base paths failed")

        self._thread = threading.Thread(target=loop, name="file-system-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops polling (and any load retry waiting)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def poll_once(self) -> None:
        """Loads aspired versions that are not loaded, then unloads those no longer aspired."""
        with self._poll_lock:
            for model in list(self._models.values()):
                if self._stop.is_set():
                    return
                self._poll_model(model)

    def _poll_model(self, model: ModelState) -> None:
        if not model.listed:
            for state in list(model.versions.values()):
                if state.state == AVAILABLE:
                    self._unload(model, state)
            return
        if not tf.io.gfile.isdir(model.base_path):
            logger.error("Could not find base path %s for servable %s", model.base_path, model.name)
            return
        on_disk = list_versions(model.base_path)
        model.on_disk = on_disk
        aspired = self._aspired(model, on_disk)
        if not aspired and not model.warned_empty:
            logger.warning(
                "No versions of servable %s found under base path %s. Did you forget to name "
                "your leaf directory as a number (eg. '/1/')?",
                model.name,
                model.base_path,
            )
        model.warned_empty = not aspired
        with self._lock:
            for state in model.versions.values():
                if state.version not in on_disk:
                    state.failed = False  # pushed again later: a fresh start
        for version in sorted(aspired, reverse=True):
            self._load_if_needed(model, version, os.path.join(model.base_path, on_disk[version]))
        with self._lock:
            aspired_available = any(
                model.versions[v].state == AVAILABLE for v in aspired if v in model.versions
            )
            to_unload = [
                s
                for s in model.versions.values()
                if s.version not in aspired and s.state == AVAILABLE
            ]
        # Keep serving the old version while no aspired one is up (a broken push), but
        # unload everything once the base path holds no aspired version at all.
        if aspired_available or not aspired:
            for state in to_unload:
                self._unload(model, state)

    @staticmethod
    def _aspired(model: ModelState, on_disk: dict[int, str]) -> list[int]:
        policy = model.policy.WhichOneof("policy_choice")
        if policy == "all":
            return sorted(on_disk, reverse=True)
        if policy == "specific":
            wanted = set(model.policy.specific.versions)
            return sorted((v for v in on_disk if v in wanted), reverse=True)
        count = max(model.policy.latest.num_versions, 1)
        return sorted(on_disk, reverse=True)[:count]

    def _load_if_needed(self, model: ModelState, version: int, path: str) -> None:
        with self._lock:
            state = model.versions.get(version)
            if state is None:
                state = model.versions[version] = VersionState(version, path)
            if state.state in (AVAILABLE, LOADING, UNLOADING) or state.failed:
                return
            state.state, state.error, state.path = LOADING, None, path
        logger.info("Loading servable version {name: %s version: %d}", model.name, version)
        attempts = self.options.max_num_load_retries + 1
        for attempt in range(attempts):
            try:
                loaded = self._loader(model.name, version, path)
                self._warm_up(loaded, path)
                break
            except Exception as error:  # reported in the version's status
                failure = status.from_exception(error)
                if failure.code == status.Code.OK:
                    failure = status.ServingError(status.Code.UNKNOWN, failure.message)
                logger.error(
                    "Loading servable version {name: %s version: %d} failed: %s",
                    model.name,
                    version,
                    failure.message,
                )
                last_attempt = attempt == attempts - 1
                interval = self.options.load_retry_interval_micros / 1e6
                if last_attempt or self._stop.wait(max(interval, 0)):
                    with self._lock:
                        state.state, state.error, state.failed = END, failure, True
                    return
                logger.info("Retrying load of servable version %d of %s", version, model.name)
        with self._lock:
            state.servable = loaded
            state.state = AVAILABLE
        logger.info(
            "Successfully loaded servable version {name: %s version: %d}", model.name, version
        )

    def _warm_up(self, loaded: servable_lib.Servable, path: str) -> None:
        if not self.options.enable_model_warmup:
            return
        warmup_file = prediction_log.warmup_path(path)
        if not tf.io.gfile.exists(warmup_file):
            logger.info("No warmup data file found at %s", warmup_file)
            return
        started = time.perf_counter()
        outcome, count = "OK", 0
        try:
            count = loaded.warm_up(
                prediction_log.read_warmup_requests(warmup_file),
                self.options.num_request_iterations_for_warmup,
            )
        except Exception as error:
            outcome = status.from_exception(error).code.name
            raise
        finally:
            if self._on_warmup is not None:
                self._on_warmup(path, outcome, time.perf_counter() - started, count)
        logger.info(
            "Finished reading warmup data for model at %s. Number of warmup records read: %d.",
            path,
            count,
        )

    def _unload(self, model: ModelState, state: VersionState) -> None:
        with self._lock:
            state.state = UNLOADING
        logger.info("Unloading servable version {name: %s version: %d}", model.name, state.version)
        with self._lock:
            # Requests that already hold the servable finish on it; Python frees it after.
            state.servable = None
            state.state = END
