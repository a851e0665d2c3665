"""TFX-style execution records: what went into a stage, with which parameters, and what came out.

Each stage of `happysad run` writes `W/<stage>/record.json`. A rerun compares the inputs' content
hashes and the parameters with the record and skips the stage when nothing changed (as TFX's
cache does); `--force` reruns it anyway. The records are also the lineage that the exported
model card points back to.
"""

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipeline import artifacts

RECORD_FILE = "record.json"

logger = logging.getLogger(__name__)


def fingerprint(path: str) -> dict[str, Any]:
    """Content hash of a file or of a whole directory tree (relative names and bytes).

    Directories are hashed file by file in sorted order, so the digest changes when any file
    is added, removed, renamed or edited, and only then. Files named `record.json` are left
    out: a stage's own record must not change its output's fingerprint.
    """
    if not _is_directory(path):
        if not FileSystems.exists(path):
            raise FileNotFoundError(f"stage input {path} does not exist")
        return {"path": path, "sha256": artifacts.file_sha256(path), "files": 1}
    prefix = path.rstrip("/") + "/"
    files = sorted(
        file_path for file_path in _files_under(path) if os.path.basename(file_path) != RECORD_FILE
    )
    if not files and "://" in path:  # on GCS and S3 a folder is a prefix: none, nothing there
        raise FileNotFoundError(f"stage input {path} does not exist")
    digest = hashlib.sha256()
    for file_path in files:
        relative = file_path[len(prefix) :]
        digest.update(
            os.fsencode(relative) + b"\0" + artifacts.file_sha256(file_path).encode() + b"\n"
        )
    return {"path": path, "sha256": digest.hexdigest(), "files": len(files)}


def _files_under(path: str) -> list[str]:
    """Every file under a directory. Locally a walk, not a glob (a folder named "photos [1]" is
    no pattern that matches itself), following links into folders as the data job does, each
    real folder once."""
    if "://" in path:
        return [
            metadata.path
            for match in FileSystems.match([path.rstrip("/") + "/**"])
            for metadata in match.metadata_list
        ]
    found, visited = [], set()
    for directory, folders, names in os.walk(path, followlinks=True):
        real = os.path.realpath(directory)
        if real in visited:
            folders[:] = []
            continue
        visited.add(real)
        paths = (os.path.join(directory, name) for name in names)
        found += [path for path in paths if os.path.exists(path)]  # not broken links
    return found


def _is_directory(path: str) -> bool:
    if "://" not in path:
        return os.path.isdir(path)
    return not FileSystems.match([path])[0].metadata_list or path.endswith("/")


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """The JSON record of one stage execution."""

    stage: str
    parameters: dict[str, Any]
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, Any]
    code_version: dict[str, str]
    started: str
    seconds: float

    def cache_key(self) -> dict[str, Any]:
        """What must be equal for a previous execution to stand in for a new one."""
        code = self.code_version if isinstance(self.code_version, dict) else {}
        return {
            "parameters": self.parameters,
            "inputs": {name: value.get("sha256") for name, value in self.inputs.items()},
            # The sources' hash, not the package version: a changed trainer retrains.
            "code": code.get("sources_sha256"),
        }


def read_record(stage_dir: str) -> StageRecord | None:
    """The stage's record, or None if it never completed (or the record is unreadable)."""
    path = os.path.join(stage_dir, RECORD_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return StageRecord(**json.load(handle))
    except (OSError, ValueError, TypeError):
        logger.warning("ignoring unreadable stage record %s", path)
        return None


def write_record(stage_dir: str, record: StageRecord) -> None:
    """Writes the record aside and renames it, so a crash never leaves a half record."""
    artifacts.write_json(os.path.join(stage_dir, RECORD_FILE), dataclasses.asdict(record))


def _jsonable(value: Any) -> Any:
    """Parameters as they will read back from JSON (tuples become lists, and so on)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


class StageRunner:
    """Runs stages into `workdir/<stage>/`, skipping those whose record still matches."""

    def __init__(
        self, workdir: str, force: bool = False, report: Callable[[str], None] = logger.info
    ):
        self.workdir = workdir
        self.force = force
        self.report = report

    def stage_dir(self, stage: str) -> str:
        return os.path.join(self.workdir, stage)

    def run(
        self,
        stage: str,
        parameters: Mapping[str, Any],
        inputs: Mapping[str, str],
        execute: Callable[[str], Mapping[str, Any]],
        clear_output: bool = True,
        required: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Runs `execute(stage_dir)` unless a matching record exists; returns the outputs.

        Args:
          stage: the stage name, also its folder under the work directory.
          parameters: everything besides the inputs that changes the result.
          inputs: name -> path of each file or folder the stage reads; hashed by content.
          execute: does the work into the stage folder and returns its outputs (JSON-able).
          clear_output: empty the stage folder before a (re)run, so no stale file survives.
          required: keys of the outputs that name paths; a record whose paths are gone no
            longer counts (someone deleted the dataset or the pushed model).
        """
        stage_dir = self.stage_dir(stage)
        started = time.time()
        candidate = StageRecord(
            stage=stage,
            parameters=_jsonable(dict(parameters)),
            inputs={name: fingerprint(path) for name, path in inputs.items()},
            outputs={},
            code_version=artifacts.code_version(),
            started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            seconds=0.0,
        )
        previous = read_record(stage_dir)
        if (
            previous
            and not self.force
            and previous.cache_key() == candidate.cache_key()
            and all(FileSystems.exists(str(previous.outputs.get(key))) for key in required)
        ):
            self.report(f"[{stage}] up to date: inputs and parameters match {RECORD_FILE}; skipped")
            return previous.outputs
        reason = "forced" if (previous and self.force) else ("changed" if previous else "new")
        self.report(f"[{stage}] running ({reason})")
        if clear_output and os.path.isdir(stage_dir):
            shutil.rmtree(stage_dir)
        os.makedirs(stage_dir, exist_ok=True)
        outputs = _jsonable(dict(execute(stage_dir)))
        record = dataclasses.replace(
            candidate, outputs=outputs, seconds=round(time.time() - started, 1)
        )
        write_record(stage_dir, record)
        self.report(f"[{stage}] done in {record.seconds:.0f} s")
        return outputs
