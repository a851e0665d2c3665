"""The data job's inputs: happy/ and sad/ folders listed and read on the Beam workers.

    root/happy/**  root/sad/**  ──ListImages──► SourceImage(path, label)   (one per file)

Each label folder is listed by a worker (`ListFolder`), not by the driver, then the file
names are spread over the workers (`Reshuffle`) for reading. Listing goes through Beam's
FileSystems, so gs:// and s3:// folders work as local ones do; on a local disk symbolic links
are followed, into linked folders too (a folder already visited is not entered again, so
link loops end), and broken links and names that are not valid UTF-8 are listed as well,
with the problem they have, so that every file gets a manifest row.
"""

import functools
import logging
import os

import apache_beam as beam
from apache_beam.io import filesystem
from apache_beam.io.filesystems import FileSystems

from pipeline import artifacts, contract, errors
from pipeline.data import schema

# Problems found before a file is read (see validate.REASONS).
BAD_FILE_NAME = "bad_file_name"
UNREADABLE = "unreadable"
TOO_LARGE = "too_large"
EMPTY = "empty"
_READ_CHUNK_BYTES = 2**20

logger = logging.getLogger(__name__)


def check_root(root: str) -> str:
    """`root` without a trailing slash, after the checks that need no listing.

    Raises:
        UserError: a local `root` that is missing or lacks a happy/ or sad/ folder.
    """
    root = root.rstrip("/") or "/"
    if not artifacts.is_local(root):
        return root
    if not os.path.isdir(root):
        raise errors.UserError(
            f"input folder {root} does not exist: give a folder with happy/ and sad/ "
            "sub-folders of images"
        )
    for label in contract.LABELS:
        if not os.path.isdir(os.path.join(root, label)):
            raise errors.UserError(
                f"input folder {root} has no {label}/ sub-folder: put photos of {label} "
                f"faces in {os.path.join(root, label)}/"
            )
    return root


class ListFolder(beam.DoFn):
    """(folder, label) -> a SourceImage per file under the folder, at any depth."""

    def process(self, element):
        folder, label = element
        if artifacts.is_local(folder):
            yield from _list_local(artifacts.local_path(folder), label)
        else:
            yield from _list_remote(folder, label)


def _list_local(folder: str, label: str):
    """os.walk following links, each real folder entered once; broken links listed too."""
    visited = set()
    for directory, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(directory)
        if real in visited:  # a link back to a folder already listed: do not loop
            folders[:] = []
            logger.warning("Not entering %s again: it links to a folder already listed", directory)
            continue
        visited.add(real)
        folders.sort()
        for name in sorted(names):
            path = os.path.join(directory, name)
            problem = ""
            if os.path.islink(path) and not os.path.exists(path):
                problem = UNREADABLE
            elif not (os.path.isfile(path) or os.path.islink(path)):
                logger.warning("Skipping %s: not a regular file", path)
                continue
            yield _source(path, label, problem)


def _source(path: str, label: str, problem: str = "") -> schema.SourceImage:
    """A SourceImage; a name that is not valid UTF-8 is shown escaped and cannot be read."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # os.walk decoded undecodable bytes as surrogates
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        return schema.SourceImage(shown, label, problem=BAD_FILE_NAME)
    return schema.SourceImage(path, label, problem=problem)


def _list_remote(folder: str, label: str):
    try:
        (match,) = FileSystems.match([folder + "/**"])
    except filesystem.BeamIOError as error:
        raise errors.UserError(f"cannot list {folder}: {error}") from error
    for metadata in sorted(match.metadata_list, key=lambda metadata: metadata.path):
        if not metadata.path.endswith("/"):
            yield schema.SourceImage(metadata.path, label)


class ListImages(beam.PTransform):
    """root -> SourceImage(path, label) for every file under root/happy/ and root/sad/."""

    def __init__(self, root: str):
        super().__init__()
        self._root = check_root(root)

    def expand(self, pbegin):
        folders = [(FileSystems.join(self._root, label), label) for label in contract.LABELS]
        return (
            pbegin
            | "LabelFolders" >> beam.Create(folders)
            | "ListFolders" >> beam.ParDo(ListFolder())
            | "SpreadOverWorkers" >> beam.Reshuffle()
        )


def read_bytes(source: schema.SourceImage, max_bytes: int) -> tuple[bytes | None, str]:
    """(data, "") for a readable file, else (None, reason): unreadable, too_large or empty.

    Reads at most max_bytes + 1 bytes, so an enormous file costs no memory. The content is
    read raw: FileSystems would otherwise gunzip a file named *.gz.
    """
    if source.problem:
        return None, source.problem
    if source.data is not None:
        data = source.data
    else:
        try:
            with _filesystem(source.path).open(
                source.path, compression_type=filesystem.CompressionTypes.UNCOMPRESSED
            ) as stream:
                data = _read_at_most(stream, max_bytes + 1)
        except Exception as error:  # noqa: BLE001 - any failure to read is the file's verdict
            logger.warning("Cannot read %s: %s", source.path, error)
            return None, UNREADABLE
    if len(data) > max_bytes:
        return None, TOO_LARGE
    if not data:
        return None, EMPTY
    return data, ""


def _read_at_most(stream, limit: int) -> bytes:
    """Up to `limit` bytes of a stream, in 1 MiB chunks (one read(limit) would allocate all)."""
    chunks, total = [], 0
    while total < limit:
        chunk = stream.read(min(_READ_CHUNK_BYTES, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@functools.cache
def _filesystem_for_scheme(scheme: str | None) -> filesystem.FileSystem:
    return FileSystems.get_filesystem("/" if scheme is None else f"{scheme}://")


def _filesystem(path: str) -> filesystem.FileSystem:
    """The Beam filesystem of a path, looked up once per scheme (the lookup is not cheap)."""
    return _filesystem_for_scheme(FileSystems.get_scheme(path))
