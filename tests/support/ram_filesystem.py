"""TensorFlow's in-memory `ram://` file system, made known to Beam: an object store for tests.

pipeline.artifacts reaches gs:// and s3:// through Beam's FileSystems and copies SavedModels
with tf.io.gfile; neither store can be reached from a test. Importing this module registers
`ram://` with Beam (Beam finds every FileSystem subclass by its scheme), backed by the same
TensorFlow ram:// files that tf.io.gfile reads and writes, so the object-store code paths
(no atomic rename: whole objects, `saved_model.pb` last) run for real in one process.
"""

import io
import posixpath

import tensorflow as tf
from apache_beam.io import filesystem

SCHEME = "ram"


class _Upload(io.BytesIO):
    """A whole-object write: the object appears when the stream is closed, as on GCS or S3."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def close(self):
        if not self.closed:
            with tf.io.gfile.GFile(self._path, "wb") as stream:
                stream.write(self.getvalue())
        super().close()


class RamFileSystem(filesystem.FileSystem):
    """Beam's FileSystem interface over tf.io.gfile's ram:// files (objects, no directories)."""

    @classmethod
    def scheme(cls):
        return SCHEME

    def join(self, basepath, *paths):
        return posixpath.join(basepath, *paths)

    def split(self, path):
        head, tail = posixpath.split(path)
        return head, tail

    def mkdirs(self, path):
        tf.io.gfile.makedirs(path)

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        top = (
            dir_or_prefix if tf.io.gfile.isdir(dir_or_prefix) else posixpath.dirname(dir_or_prefix)
        )
        if not tf.io.gfile.exists(top):
            return
        seen = set()
        for directory, _, names in tf.io.gfile.walk(top):
            for name in names:
                path = posixpath.join(directory, name)
                # (TF's ram:// lists "assets.extra/x" under "assets" too: keep real objects.)
                if path.startswith(dir_or_prefix) and path not in seen and self.exists(path):
                    seen.add(path)
                    yield self.metadata(path)

    def _open(self, path, mode, compression_type):
        if compression_type == filesystem.CompressionTypes.AUTO:
            compression_type = filesystem.CompressionTypes.detect_compression_type(path)
        if mode == "wb":
            raw = _Upload(path)
        elif not self.exists(path):
            raise FileNotFoundError(f"no object {path}")
        else:
            with tf.io.gfile.GFile(path, "rb") as stream:
                raw = io.BytesIO(stream.read())
        if compression_type == filesystem.CompressionTypes.UNCOMPRESSED:
            return raw
        return filesystem.CompressedFile(raw, compression_type=compression_type)

    def create(self, path, mime_type="application/octet-stream", compression_type="auto"):
        tf.io.gfile.makedirs(posixpath.dirname(path))
        return self._open(path, "wb", compression_type)

    def open(self, path, mime_type="application/octet-stream", compression_type="auto"):
        return self._open(path, "rb", compression_type)

    def copy(self, source_file_names, destination_file_names):
        for source, destination in zip(source_file_names, destination_file_names, strict=True):
            tf.io.gfile.copy(source, destination, overwrite=True)

    def rename(self, source_file_names, destination_file_names):
        self.copy(source_file_names, destination_file_names)
        self.delete(source_file_names)

    def exists(self, path):
        # As on GCS and S3: objects exist, "folders" are only a prefix of their names.
        return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)

    def size(self, path):
        return tf.io.gfile.stat(path).length

    def last_updated(self, path):
        return tf.io.gfile.stat(path).mtime_nsec / 1e9

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        return filesystem.FileMetadata(path, self.size(path), self.last_updated(path))

    def delete(self, paths):
        for path in paths:
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)


def new_base(name: str) -> str:
    """A fresh ram:// folder name (the ram file system lives as long as the process)."""
    import uuid

    return f"{SCHEME}://{name}-{uuid.uuid4().hex}"
