"""Push a blessed SavedModel version into a serving base path that a model server may be polling.

TF Serving watches `<serving_base>/<version>/` and loads a version as soon as it sees it, so a
version must appear whole: on a local disk it is copied into a hidden `.<version>.tmp-*` folder
(ignored by the server, whose versions are integers) and renamed into place in one step; on
object stores (gs://, s3://, where there is no atomic rename) every file is copied first and
`saved_model.pb` last, because TF Serving takes that file as the sign that a version is
complete. An existing version number is never overwritten.
"""

import dataclasses
import json
import logging
import os
import re
import shutil
import uuid

import tensorflow as tf

from pipeline import errors

SAVED_MODEL_FILE = "saved_model.pb"
MODEL_CARD_PATH = os.path.join("assets", "model_card.json")
# A version folder is a positive integer, as TF Serving's file system source expects.
_VERSION_NAME = re.compile(r"^[1-9][0-9]*$")

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PushConfig:
    """Which exported version to push, where, and on what blessing."""

    model_dir: str = dataclasses.field(
        metadata={"help": "an exported SavedModel version directory (e.g. export/3)"}
    )
    serving_base: str = dataclasses.field(
        metadata={"help": "the base path TF Serving polls (local, gs:// or s3://)"}
    )
    blessing: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "blessing.json written by `happysad evaluate`; default: the blessing that "
            "`happysad export --evaluation-dir` put in the model card"
        },
    )
    force: bool = dataclasses.field(
        default=False,
        metadata={"help": "push even if the model is not blessed (the reasons are logged)"},
    )
    version: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "version number in the serving base; default: one more than the highest "
            "there, so the server's latest-version policy serves it. An existing number is "
            "refused, never overwritten"
        },
    )


def is_remote(path: str) -> bool:
    """Whether `path` is on an object store or other non-local file system (has a scheme)."""
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def list_versions(base: str) -> list[int]:
    """The version numbers under `base` that hold a complete SavedModel, ascending.

    Half-pushed folders on object stores (no `saved_model.pb` yet) and hidden `.N.tmp-*`
    folders are not versions. A missing base has none.
    """
    if not tf.io.gfile.isdir(base):
        return []
    versions = []
    for name in tf.io.gfile.listdir(base):
        name = name.rstrip("/")
        if _VERSION_NAME.match(name) and tf.io.gfile.exists(
            os.path.join(base, name, SAVED_MODEL_FILE)
        ):
            versions.append(int(name))
    return sorted(versions)


def _taken_versions(base: str) -> set[int]:
    """Every integer-named folder, complete or not: none of them may be written into."""
    if not tf.io.gfile.isdir(base):
        return set()
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(base))
    return {int(name) for name in names if _VERSION_NAME.match(name)}


def latest_version_dir(base: str) -> str | None:
    """The directory of the highest complete version under `base` (the one TF Serving serves)."""
    versions = list_versions(base)
    return os.path.join(base, str(versions[-1])) if versions else None


def next_version(base: str) -> int:
    """One more than the highest version folder under `base` (1 for an empty or missing base)."""
    return max(_taken_versions(base), default=0) + 1


def check_version(base: str, version: int | None) -> int:
    """The version to write: `version` if it is free, or the next one when it is None.

    Raises:
        UserError: `version` is not positive or already exists (complete or not).
    """
    if version is None:
        return next_version(base)
    if version < 1:
        raise errors.UserError(f"version must be a positive integer, got {version}")
    if version in _taken_versions(base):
        raise errors.UserError(
            f"version {version} already exists in {base}: versions are never overwritten "
            f"(leave the version out to use the next one, {next_version(base)})"
        )
    highest = max(_taken_versions(base), default=0)
    if version < highest:
        logger.warning(
            "version %d is below the highest version %d in %s: a server with the default "
            "latest-version policy will not serve it",
            version,
            highest,
            base,
        )
    return version


def _copy_tree(source: str, destination: str) -> list[str]:
    """Copies every file under `source` into `destination`, `saved_model.pb` last.

    Returns the destination paths in the order they were written.
    """
    source = source.rstrip("/")
    files = []
    for directory, _, names in tf.io.gfile.walk(source):
        relative = directory[len(source) :].strip("/")
        files += [os.path.join(relative, name) for name in names]
    if SAVED_MODEL_FILE not in files:
        raise errors.UserError(f"{source} is not a SavedModel directory (no {SAVED_MODEL_FILE})")
    files.sort(key=lambda name: (name == SAVED_MODEL_FILE, name))
    written = []
    for relative in files:
        target = os.path.join(destination, relative)
        tf.io.gfile.makedirs(os.path.dirname(target))
        tf.io.gfile.copy(os.path.join(source, relative), target, overwrite=False)
        written.append(target)
    return written


def publish(source_dir: str, base: str, version: int | None = None, *, move: bool = False) -> str:
    """Makes `source_dir` appear as `<base>/<version>/` in one step, as a server polling sees it.

    Args:
        source_dir: a complete SavedModel directory.
        base: the serving (or export) base path, local or on an object store.
        version: the version number; None for the next one after the highest in `base`.
        move: on a local base, rename `source_dir` itself into place instead of copying it
            (it must be on the same file system, e.g. a hidden folder inside `base`).

    Returns:
        The path of the new version directory.

    Raises:
        UserError: the version already exists, or `source_dir` is not a SavedModel.
    """
    version = check_version(base, version)
    final = os.path.join(base, str(version))
    if is_remote(base):
        _copy_tree(source_dir, final)
        logger.info("copied %s to %s (%s last)", source_dir, final, SAVED_MODEL_FILE)
        return final

    base, final = _local(base), _local(final)
    os.makedirs(base, exist_ok=True)
    if move:
        staging = source_dir
    else:
        staging = staging_dir(base, version)  # created by the copy, with the umask's mode
        try:
            _copy_tree(source_dir, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    _rename_into_place(staging, final, version)
    logger.info("published %s as %s", source_dir, final)
    return final


def _rename_into_place(staging: str, final: str, version: int) -> None:
    # rename(2) would replace an empty directory, so look first; a non-empty one makes it fail.
    if os.path.exists(final):
        shutil.rmtree(staging, ignore_errors=True)
        raise errors.UserError(f"version {version} appeared in {os.path.dirname(final)} meanwhile")
    try:
        os.rename(staging, final)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise errors.UserError(f"could not rename {staging} to {final}: {error}") from None


def staging_dir(base: str, version: int) -> str:
    """A fresh hidden folder in a local `base` that `publish(..., move=True)` can rename."""
    os.makedirs(base, exist_ok=True)
    return os.path.join(base, f".{version}.tmp-{uuid.uuid4().hex}")


def read_model_card(model_dir: str) -> dict:
    """The model card of an exported version ({} when it has none)."""
    path = os.path.join(model_dir, MODEL_CARD_PATH)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def _read_blessing(config: PushConfig, card: dict) -> tuple[dict | None, str]:
    if config.blessing:
        if not tf.io.gfile.exists(config.blessing):
            raise errors.UserError(f"blessing file {config.blessing} does not exist")
        with tf.io.gfile.GFile(config.blessing) as handle:
            return json.load(handle), config.blessing
    if "blessing" in card:
        return card["blessing"], os.path.join(config.model_dir, MODEL_CARD_PATH)
    return None, ""


def refusal_reasons(blessing: dict | None, card: dict) -> list[str]:
    """Why a model must not be pushed; empty when it is blessed for this very model."""
    if blessing is None:
        return ["no blessing: run `happysad evaluate` and pass its blessing.json with --blessing"]
    reasons = []
    if not blessing.get("blessed"):
        reasons += blessing.get("reasons") or ["the evaluation did not bless the model"]
    blessed_model = blessing.get("model_sha256")
    exported_model = card.get("model_sha256")
    if blessed_model and exported_model and blessed_model != exported_model:
        reasons.append(
            f"the blessing is for another model (sha256 {blessed_model[:12]}…) than the one "
            f"exported here ({exported_model[:12]}…)"
        )
    return reasons


def run(config: PushConfig) -> dict:
    """Pushes `config.model_dir` as a new version of `config.serving_base` if it is blessed."""
    if not tf.io.gfile.exists(os.path.join(config.model_dir, SAVED_MODEL_FILE)):
        raise errors.UserError(
            f"{config.model_dir} is not an exported SavedModel version (no {SAVED_MODEL_FILE})"
        )
    card = read_model_card(config.model_dir)
    blessing, blessing_source = _read_blessing(config, card)
    reasons = refusal_reasons(blessing, card)
    if reasons and not config.force:
        raise errors.UserError(
            "refusing to push an unblessed model (use --force to push anyway): "
            + "; ".join(reasons)
        )
    if reasons:
        logger.warning("pushing an unblessed model because of --force: %s", "; ".join(reasons))
    path = publish(config.model_dir, config.serving_base, config.version)
    return {
        "path": path,
        "version": int(os.path.basename(path)),
        "blessed": not reasons,
        "forced": bool(reasons),
        "reasons": reasons,
        "blessing": blessing_source,
    }
