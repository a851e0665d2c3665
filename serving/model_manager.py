"""Model versions under a base path: discovered by polling, loaded, warmed up, swapped, unloaded.

This is TF Serving's file-system source and availability-preserving manager in small:
numbered subdirectories of `model_base_path` are versions; the version policy picks the
aspired ones (the latest, by default); a new version is loaded and warmed up *before* it
becomes the default, and an old one is unloaded only once an aspired version is AVAILABLE,
so a push never causes a failed request (and a broken push leaves the old version serving).
Requests already holding an unloaded version finish on it.
"""

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable

import tensorflow as tf

from serving import metrics as metrics_lib
from serving import prediction_log, status
from serving import servable as servable_lib

logger = logging.getLogger(__name__)

# ModelVersionStatus.State names (tensorflow_serving/apis/get_model_status.proto).
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
LATEST_POLICY, ALL_POLICY = "latest", "all"


@dataclasses.dataclass
class VersionState:
    """What the status API reports for one version."""

    version: int
    state: str = START
    error_code: status.Code = status.Code.OK
    error_message: str = ""
    failed_loads: int = 0
    servable: servable_lib.Servable | None = None

    def to_json(self) -> dict:
        return {
            "version": str(self.version),
            "state": self.state,
            "status": {"error_code": self.error_code.name, "error_message": self.error_message},
        }


def list_versions(base_path: str) -> list[int]:
    """Numbered subdirectories of `base_path` that hold a SavedModel, highest first.

    A directory still being copied (no saved_model.pb yet) is not a version yet.
    """
    try:
        names = tf.io.gfile.listdir(base_path)
    except tf.errors.NotFoundError:
        return []
    versions = []
    for name in names:
        name = name.rstrip("/")
        if name.isdigit() and servable_lib.is_saved_model_dir(os.path.join(base_path, name)):
            versions.append(int(name))
    return sorted(versions, reverse=True)


class ModelManager:
    """Keeps the aspired versions of one model loaded and answers which one serves a request.

    Args:
      model_name: the name requests use (`/v1/models/<model_name>`).
      base_path: the directory of numbered versions (local, gs://, s3://...).
      version_policy: LATEST_POLICY (the newest `num_versions`) or ALL_POLICY.
      max_num_load_retries: a version that fails to load is retried on later polls this
        many times, then left in END with its error.
      loader: builds a Servable from (model_name, version, path); tests may swap it.
    """

    def __init__(
        self,
        model_name: str,
        base_path: str,
        *,
        version_policy: str = LATEST_POLICY,
        num_versions: int = 1,
        max_num_load_retries: int = 5,
        loader: Callable[[str, int, str], servable_lib.Servable] = servable_lib.Servable,
        metrics: metrics_lib.ServerMetrics | None = None,
    ):
        if version_policy not in (LATEST_POLICY, ALL_POLICY):
            raise ValueError(f"version_policy must be {LATEST_POLICY!r} or {ALL_POLICY!r}")
        if num_versions < 1:
            raise ValueError("num_versions must be at least 1")
        self.model_name = model_name
        self.base_path = base_path
        self.version_policy = version_policy
        self.num_versions = num_versions
        self.max_num_load_retries = max_num_load_retries
        self._loader = loader
        self._metrics = metrics
        self._states: dict[int, VersionState] = {}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_empty = False

    # -- what requests see ---------------------------------------------------------------

    def servable(self, model_name: str, version: int | None = None) -> servable_lib.Servable:
        """The servable for a request: the given version, or the latest AVAILABLE one.

        Raises:
          status.ServingError: NOT_FOUND, with TF Serving's message, when there is none.
        """
        with self._lock:
            if model_name == self.model_name:
                if version is None:
                    available = [s for s in self._states.values() if s.state == AVAILABLE]
                    if available:
                        return max(available, key=lambda s: s.version).servable
                else:
                    state = self._states.get(version)
                    if state is not None and state.state == AVAILABLE:
                        return state.servable
        request = (
            f"Latest({model_name})" if version is None else f"Specific({model_name}, {version})"
        )
        raise status.not_found(f"Servable not found for request: {request}")

    def status(self, model_name: str, version: int | None = None) -> dict:
        """GetModelStatusResponse as JSON: `model_version_status`, newest version first."""
        with self._lock:
            known = model_name == self.model_name
            if version is not None:
                state = self._states.get(version) if known else None
                if state is None:
                    raise status.not_found(
                        f"Could not find version {version} of model {model_name}"
                    )
                states = [state]
            else:
                states = sorted(self._states.values(), key=lambda s: -s.version) if known else []
                if not states:
                    raise status.not_found(f"Could not find any versions of model {model_name}")
            return {"model_version_status": [state.to_json() for state in states]}

    @property
    def available_versions(self) -> list[int]:
        with self._lock:
            return sorted(
                (s.version for s in self._states.values() if s.state == AVAILABLE), reverse=True
            )

    @property
    def ready(self) -> bool:
        """Whether some version is AVAILABLE (what a readiness probe asks)."""
        return bool(self.available_versions)

    # -- polling -------------------------------------------------------------------------

    def start(self, poll_wait_seconds: float) -> None:
        """Polls now and then every `poll_wait_seconds` in a daemon thread.

        As in TF Serving, 0 polls exactly once and a negative value never polls.
        """
        if poll_wait_seconds < 0:
            return

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.poll_once()
                except Exception:  # a storage hiccup must not stop future polls
                    logger.exception("Polling %s failed", self.base_path)
                if poll_wait_seconds == 0 or self._stop.wait(poll_wait_seconds):
                    return

        self._thread = threading.Thread(target=loop, name="model-manager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def poll_once(self) -> None:
        """Loads aspired versions that are not loaded, then unloads versions no longer aspired."""
        with self._poll_lock:
            on_disk = list_versions(self.base_path)
            aspired = self._aspired(on_disk)
            if not on_disk and not self._warned_empty:
                logger.warning(
                    "No versions of servable %s found under base path %s",
                    self.model_name,
                    self.base_path,
                )
            self._warned_empty = not on_disk  # once per empty spell, not once per poll
            for version in aspired:
                self._load_if_needed(version)
            with self._lock:
                aspired_available = any(
                    self._states[v].state == AVAILABLE for v in aspired if v in self._states
                )
                to_unload = [
                    state
                    for state in self._states.values()
                    if state.version not in aspired and state.state == AVAILABLE
                ]
                for state in self._states.values():
                    if state.version not in on_disk and state.state == END:
                        state.failed_loads = 0  # a version pushed again gets a fresh start
            # Keep serving the old version while no aspired one is up (a broken push), but
            # unload everything once the base path holds no version at all.
            if aspired_available or not aspired:
                for state in to_unload:
                    self._unload(state)
            self._publish()

    def _aspired(self, on_disk: list[int]) -> list[int]:
        if self.version_policy == ALL_POLICY:
            return on_disk
        return on_disk[: self.num_versions]

    def _load_if_needed(self, version: int) -> None:
        with self._lock:
            state = self._states.setdefault(version, VersionState(version))
            if state.state in (AVAILABLE, LOADING, UNLOADING):
                return
            if state.state == END and state.servable is None and state.error_code == status.Code.OK:
                state.failed_loads = 0  # unloaded earlier and aspired again
            if state.failed_loads > self.max_num_load_retries:
                return
            state.state = LOADING
            state.error_code, state.error_message = status.Code.OK, ""
        path = os.path.join(self.base_path, str(version))
        logger.info("Loading servable version {name: %s version: %d}", self.model_name, version)
        try:
            loaded = self._loader(self.model_name, version, path)
            self._warm_up(loaded, path)
        except Exception as error:  # any load failure is reported in the version's status
            failure = status.from_exception(error)
            if failure.code == status.Code.OK:
                failure = status.ServingError(status.Code.UNKNOWN, failure.message)
            with self._lock:
                state.state = END
                state.error_code = failure.code
                state.error_message = failure.message
                state.failed_loads += 1
            logger.error(
                "Loading servable version {name: %s version: %d} failed: %s",
                self.model_name,
                version,
                failure.message,
            )
            return
        with self._lock:
            state.servable = loaded
            state.state = AVAILABLE
        logger.info(
            "Successfully loaded servable version {name: %s version: %d}", self.model_name, version
        )

    def _warm_up(self, loaded: servable_lib.Servable, path: str) -> None:
        warmup_file = prediction_log.warmup_path(path)
        if not tf.io.gfile.exists(warmup_file):
            logger.info("No warmup data file found at %s", warmup_file)
            return
        started = time.perf_counter()
        outcome = "OK"
        try:
            count = loaded.warm_up(prediction_log.read_warmup_requests(warmup_file))
        except Exception as error:
            outcome = status.from_exception(error).code.name
            raise
        finally:
            if self._metrics is not None:
                micros = (time.perf_counter() - started) * 1e6
                self._metrics.model_warmup_latency.observe(micros, model_path=path, status=outcome)
        logger.info("Finished reading warmup data for model at %s: %d records", path, count)

    def _unload(self, state: VersionState) -> None:
        with self._lock:
            state.state = UNLOADING
        logger.info(
            "Unloading servable version {name: %s version: %d}", self.model_name, state.version
        )
        with self._lock:
            # Requests that already hold the servable finish on it; Python frees it after.
            state.servable = None
            state.state = END

    def _publish(self) -> None:
        if self._metrics is None:
            return
        available = self.available_versions
        self._metrics.available_versions.set(len(available), model_name=self.model_name)
        self._metrics.latest_version.set(
            available[0] if available else 0, model_name=self.model_name
        )
