"""Files between stages, written once and right: atomic writes and publishes, hashes, versions.

Every file a reader (a later stage, TF Serving's file-system poller, a user) could pick up
half-written goes through here. On a local disk it is written beside its final name and
renamed (rename(2) is atomic within a file system); on object stores (gs://, s3://), where
each object appears whole when its upload completes and there is no rename, it is written in
place, and a directory is published file by file with its marker file (`saved_model.pb`)
last, which is what TF Serving waits for. Paths go through Beam's FileSystems (local, gs://,
s3:// with the extras installed), so every stage works on every store.
"""

import csv
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable

from apache_beam.io import filesystem
from apache_beam.io.filesystems import FileSystems

import pipeline
from pipeline import contract, errors

_CHUNK = 1 << 20
# TF Serving takes a folder as a version when its whole name parses as a non-negative int64
# (file_system_storage_path_source.cc: ParseVersionNumber -> strings::safe_strto64), so "007"
# is version 7; hidden staging folders (".7.tmp-...") are not versions.
_VERSION_NAME = re.compile(r"^[0-9]{1,18}$")
_PACKAGES = ("pipeline", "happysad_tfds")  # their sources make the code version
_UNCOMPRESSED = filesystem.CompressionTypes.UNCOMPRESSED

logger = logging.getLogger(__name__)


def is_local(path: str) -> bool:
    """Whether `path` is on the local file system (no scheme, or file://)."""
    return FileSystems.get_scheme(path) in (None, "file")


def local_path(path: str) -> str:
    """`path` without a file:// scheme."""
    return path[len("file://") :] if path.startswith("file://") else path


def write_with(path: str, write: Callable[[str], object]) -> str:
    """Calls `write(temporary_path)` and renames the result to `path`; returns `path`.

    For writers that want a path (keras Model.save, matplotlib savefig, TFRecord writers).
    The temporary name keeps `path`'s extension, which such writers look at. Local paths
    only: object-store writers upload whole objects themselves.

    Raises:
        Whatever `write` raises; the temporary file is removed and `path` is untouched.
    """
    path = local_path(path)
    directory, name = os.path.split(path)
    os.makedirs(directory or ".", exist_ok=True)
    stem, extension = os.path.splitext(name)
    temporary = os.path.join(directory, f".{stem}.tmp-{uuid.uuid4().hex}{extension}")
    try:
        write(temporary)
        os.chmod(temporary, 0o644)  # what a plain open() gives under the usual umask
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def write_bytes(path: str, data: bytes) -> str:
    """Writes `data` to `path` (local, gs://, s3://) so that no reader sees half of it."""
    if is_local(path):

        def write(temporary: str) -> None:
            with open(temporary, "wb") as handle:
                handle.write(data)

        return write_with(path, write)
    with FileSystems.create(path, compression_type=_UNCOMPRESSED) as stream:
        stream.write(data)
    return path


def write_text(path: str, text: str) -> str:
    """write_bytes of UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str, value) -> str:
    """Indented, key-sorted JSON with a final newline; anything not JSON-able as str()."""
    return write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def read_bytes(path: str) -> bytes:
    """The whole file at `path` (any Beam file system), uncompressed whatever its name.

    Raises:
        UserError: the file does not exist or cannot be read.
    """
    try:
        with FileSystems.open(path, compression_type=_UNCOMPRESSED) as stream:
            return stream.read()
    except (OSError, filesystem.BeamIOError) as error:
        raise errors.UserError(f"cannot read {path}: {error}") from None


def read_json(path: str) -> dict:
    """The JSON object in `path`.

    Raises:
        UserError: the file is missing, unreadable or not JSON.
    """
    try:
        return json.loads(read_bytes(path))
    except json.JSONDecodeError as error:
        raise errors.UserError(f"{path} is not valid JSON: {error}") from None


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes (FIPS 180-4), read in 1 MiB chunks.

    Raises:
        OSError / BeamIOError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type=_UNCOMPRESSED) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_history(path: str) -> dict[str, list[float | None]]:
    """A Keras CSVLogger history.csv as column -> values, one per epoch, in file order.

    Empty cells and Keras' "NA" (a metric missing that epoch, e.g. no validation) are None.
    A missing file is an empty history.
    """
    if not FileSystems.exists(path):
        return {}
    rows = list(csv.DictReader(io.StringIO(read_bytes(path).decode("utf-8"))))
    history: dict[str, list[float | None]] = {}
    for row in rows:
        for name, text in row.items():
            history.setdefault(name, []).append(_number(text))
    return history


def _number(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def code_version() -> dict:
    """What code made an artifact: the package version, the sources' hash, the git commit.

    `sources_sha256` covers every .py file of the pipeline and happysad_tfds packages
    (relative path and bytes), so it changes with any edit, committed or not: the stage
    cache keys on it. `git_commit` is added when the code runs from a git checkout.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(pipeline.__file__)))
    digest = hashlib.sha256()
    for package in _PACKAGES:
        for directory, folders, names in os.walk(os.path.join(root, package)):
            folders.sort()
            for name in sorted(names):
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    digest.update(os.path.relpath(path, root).encode() + b"\0")
                    with open(path, "rb") as handle:
                        digest.update(hashlib.sha256(handle.read()).digest())
    version = {"happysad": pipeline.__version__, "sources_sha256": digest.hexdigest()}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return {**version, "git_commit": commit}


# Model versions, as TF Serving sees them.


def list_versions(base: str) -> list[int]:
    """The version numbers under `base` that hold a complete SavedModel, ascending.

    A version is a folder whose name is a non-negative integer (TF Serving's rule, so "007"
    is version 7) holding `saved_model.pb`; half-pushed folders and hidden staging folders
    are not versions. A missing base has none.
    """
    return sorted(version for version, name in _version_folders(base) if _is_complete(base, name))


def _version_folders(base: str) -> list[tuple[int, str]]:
    """(version, folder name) of every integer-named folder under `base`, complete or not."""
    if is_local(base):
        if not os.path.isdir(local_path(base)):
            return []
        names = [name for name in os.listdir(local_path(base)) if os.path.isdir(join(base, name))]
    else:  # no exists() for a prefix: on GCS and S3 only objects exist, "folders" do not
        prefix = base.rstrip("/") + "/"
        matches = FileSystems.match([prefix + "*/" + contract.SAVED_MODEL_FILE, prefix + "*/*"])
        names = {
            metadata.path[len(prefix) :].split("/", 1)[0]
            for match in matches
            for metadata in match.metadata_list
        }
    return [(int(name), name) for name in names if _VERSION_NAME.match(name)]


def join(base: str, *parts: str) -> str:
    """`base`/`parts` with the separator of `base`'s file system (URIs always use "/")."""
    return posixpath.join(base, *parts) if not is_local(base) else os.path.join(base, *parts)


def remove(path: str) -> None:
    """Deletes a file or a whole folder (on object stores: every object under it), if there."""
    if is_local(path):
        path = local_path(path)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        return
    matches = FileSystems.match([path, path.rstrip("/") + "/**"])
    stale = [metadata.path for match in matches for metadata in match.metadata_list]
    if stale:
        FileSystems.delete(stale)


def _is_complete(base: str, name: str) -> bool:
    return FileSystems.exists(join(base, name, contract.SAVED_MODEL_FILE))


def version_dir(base: str, version: int) -> str:
    """The folder of `version` under `base`, under its own name ("007" stays "007").

    Raises:
        UserError: `base` has no complete version `version`.
    """
    for number, name in _version_folders(base):
        if number == version and _is_complete(base, name):
            return join(base, name)
    raise errors.UserError(f"{base} has no complete version {version}")


def latest_version_dir(base: str) -> str | None:
    """The folder of the highest complete version under `base` (what TF Serving serves)."""
    versions = list_versions(base)
    return version_dir(base, versions[-1]) if versions else None


def next_version(base: str) -> int:
    """One more than the highest integer-named folder under `base` (1 for none)."""
    return max((number for number, _ in _version_folders(base)), default=0) + 1


def check_version(base: str, version: int | None) -> int:
    """The version to write: `version` if it is free, or the next one when it is None.

    Raises:
        UserError: `version` is not positive or already exists (complete or not).
    """
    if version is None:
        return next_version(base)
    if version < 1:
        raise errors.UserError(f"version must be a positive integer, got {version}")
    taken = {number for number, _ in _version_folders(base)}
    if version in taken:
        raise errors.UserError(
            f"version {version} already exists in {base}: versions are never overwritten "
            f"(leave the version out to use the next one, {next_version(base)})"
        )
    if version < max(taken, default=0):
        logger.warning(
            "version %d is below the highest version %d in %s: a server with the default "
            "latest-version policy will not serve it",
            version,
            max(taken),
            base,
        )
    return version


def staging_dir(base: str, version: int) -> str:
    """A fresh hidden folder in a local `base` that `publish(..., move=True)` can rename."""
    base = local_path(base)
    os.makedirs(base, exist_ok=True)
    return os.path.join(base, f".{version}.tmp-{uuid.uuid4().hex}")


def publish(source_dir: str, base: str, version: int | None = None, *, move: bool = False) -> str:
    """Makes the SavedModel in `source_dir` appear as `<base>/<version>/` in one step.

    Locally: copied into a hidden staging folder of `base` (or, with `move`, `source_dir`
    itself, which must be such a folder) and renamed into place. On object stores: every
    file copied, `saved_model.pb` last (TF Serving loads a version once that file exists).

    Args:
        source_dir: a complete SavedModel directory.
        base: the serving (or export) base path, local or on an object store.
        version: the version number; None for the next one after the highest in `base`.
        move: rename `source_dir` itself into place (local bases only).

    Returns:
        The path of the new version directory.

    Raises:
        UserError: the version already exists, or `source_dir` is not a SavedModel.
    """
    version = check_version(base, version)
    final = join(base, str(version))
    if not is_local(base):
        _copy_tree(source_dir, final)
        logger.info("copied %s to %s (%s last)", source_dir, final, contract.SAVED_MODEL_FILE)
        return final
    final = local_path(final)
    staging = source_dir if move else staging_dir(base, version)
    if not move:
        try:
            _copy_tree(source_dir, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    # rename(2) would replace an empty directory, so look first; a non-empty one makes it fail.
    try:
        if os.path.exists(final):
            raise errors.UserError(f"version {version} appeared in {base} meanwhile")
        os.rename(staging, final)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            raise errors.UserError(f"could not rename {staging} to {final}: {error}") from None
        raise
    logger.info("published %s as %s", source_dir, final)
    return final


def _copy_tree(source: str, destination: str) -> list[str]:
    """Copies every file under `source` into `destination`, `saved_model.pb` last."""
    import tensorflow as tf  # tf.io.gfile copies between any two file systems TF knows

    source = source.rstrip("/")
    files = []
    for directory, _, names in tf.io.gfile.walk(source):
        relative = directory[len(source) :].strip("/")
        files += [posixpath.join(relative, name) if relative else name for name in names]
    if contract.SAVED_MODEL_FILE not in files:
        raise errors.UserError(
            f"{source} is not a SavedModel directory (no {contract.SAVED_MODEL_FILE})"
        )
    files.sort(key=lambda name: (name == contract.SAVED_MODEL_FILE, name))
    written = []
    for relative in files:
        target = join(destination, relative)
        tf.io.gfile.makedirs(posixpath.dirname(target))
        tf.io.gfile.copy(join(source, relative), target, overwrite=False)
        written.append(target)
    return written
