"""`happysad preprocess`: the Beam pipeline that validates, cleans, dedupes and splits images.

    happy/ sad/ files ──ListLabelledFiles──► SourceImage ──CleanImages──► accepted CleanImage
                                                                   └────► manifest row per input

CleanImages reads every file twice, and that is on purpose: a first pass only hashes the bytes
and groups the (small) hashes with the files' paths to find exact copies and label conflicts;
the second pass, per group, reads, validates and resizes each file with its group's verdict.
Nothing large is ever grouped or held, so memory stays bounded by one image per worker thread
however many multi-megapixel photos the folder holds, and the decoded images never leave the
stage that makes them. The TFDS `folder` and `synthetic` configs run the same two transforms.
"""

import csv
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import re
import uuid

import apache_beam as beam
import cv2
from apache_beam.io import filesystem, filesystems

from pipeline import beam_options, errors, example_proto, imaging, schema, splits

logger = logging.getLogger(__name__)

# The manifest: one row per input file, in this column order.
MANIFEST_COLUMNS = (
    "path",
    "label",
    "status",
    "reason",
    "split",
    "sha256",
    "width",
    "height",
    "format",
    "mode",
    "orientation",
    "grayscale",
    "brightness",
    "face",
    "bytes",
    "duplicate_of",
)
MANIFEST_FILE = "manifest.csv"
SUMMARY_FILE = "summary.json"
IMAGES_DIR = "images"
TFRECORDS_DIR = "tfrecords"
_METRICS_NAMESPACE = "happysad"
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_READ_CHUNK_BYTES = 2**20

FileSystems = filesystems.FileSystems


# ---------------------------------------------------------------------------------------------
# Listing the input folder.


class ListLabelledFiles(beam.PTransform):
    """Lists every regular file under `root`/happy and `root`/sad as a SourceImage (data=None).

    The listing happens when the pipeline is built, so a wrong folder fails at once with a
    UserError rather than on a worker. Works on any Beam filesystem (gs://, s3://, hdfs://);
    on local disks broken symbolic links are listed too, so that the manifest accounts for them.
    The listing travels as JSON text, up to LISTING_BATCH (path, label) pairs an element and
    at least LISTING_PARTS elements when there are enough files: Beam's Create infers a type,
    encodes and pickles per element, which costs more per file than the whole rest of the
    pipeline's bookkeeping, while a string per batch costs next to nothing.
    """

    LISTING_BATCH = 100
    LISTING_PARTS = 64

    def __init__(self, root: str):
        super().__init__()
        self._root = root

    def expand(self, pbegin):
        sources = list_labelled_files(self._root)
        logger.info("Found %d files under %s", len(sources), self._root)
        batches = [
            json.dumps([[source.path, source.label] for source in sources[start:end]])
            for start, end in _batch_bounds(len(sources), self.LISTING_BATCH, self.LISTING_PARTS)
        ]
        return (
            pbegin
            | "CreateSources" >> beam.Create(batches)
            | "Unbatch" >> beam.FlatMap(_sources_of_batch)
        )


def _batch_bounds(count: int, most: int, parts: int) -> list[tuple[int, int]]:
    """(start, end) of batches of at most `most` items, and at least `parts` batches if possible."""
    size = min(most, max(1, math.ceil(count / parts)))
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def _sources_of_batch(batch: str):
    for path, label in json.loads(batch):
        yield schema.SourceImage(path, label)


def list_labelled_files(root: str) -> list[schema.SourceImage]:
    """The SourceImages under root/<label>/ for both labels, sorted by path.

    Raises:
      UserError: if root is missing, lacks a happy/ or sad/ folder, or one of them is empty.
    """
    root = root.rstrip("/") or "/"
    local = _is_local(root)
    if local and not os.path.isdir(root):
        raise errors.UserError(f"input folder {root} does not exist or is not a folder")
    sources = []
    for label in sorted(schema.LABELS, reverse=True):
        folder = FileSystems.join(root, label)
        if local and not os.path.isdir(folder):
            raise errors.UserError(f"input folder {root} has no {label}/ sub-folder")
        paths = _list_local_files(folder) if local else _list_remote_files(folder)
        if not paths:
            raise errors.UserError(f"class folder {folder} is empty or missing: no {label} images")
        sources.extend(schema.SourceImage(path, label) for path in paths)
    return sources


def _is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def _list_local_files(folder: str) -> list[str]:
    """Every regular file (links followed) and every broken link under folder, recursively."""
    paths = []
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path) or (os.path.islink(path) and not os.path.exists(path)):
                paths.append(path)
            else:
                logger.warning("Skipping %s: not a regular file", path)
    return sorted(paths)


def _list_remote_files(folder: str) -> list[str]:
    try:
        (match,) = FileSystems.match([folder + "/**"])
    except filesystems.BeamIOError as error:
        raise errors.UserError(f"cannot list {folder}: {error}") from error
    return sorted(meta.path for meta in match.metadata_list if not meta.path.endswith("/"))


# ---------------------------------------------------------------------------------------------
# Cleaning.


def read_bytes(source: schema.SourceImage, max_bytes: int) -> tuple[bytes | None, str]:
    """(data, "") for a readable file, else (None, reason): unreadable or too_large.

    Reads at most max_bytes + 1 bytes, so an enormous file costs no memory. The content is
    read raw: FileSystems would otherwise gunzip a file named *.gz.
    """
    if source.data is not None:
        return source.data, ""
    try:
        with _filesystem(source.path).open(
            source.path, compression_type=filesystem.CompressionTypes.UNCOMPRESSED
        ) as stream:
            data = _read_at_most(stream, max_bytes + 1)
    except Exception as error:  # noqa: BLE001 - any failure to read is the file's verdict
        logger.warning("Cannot read %s: %s", source.path, error)
        return None, imaging.UNREADABLE
    if len(data) > max_bytes:
        return None, imaging.TOO_LARGE
    return data, ""


def _read_at_most(stream, limit: int) -> bytes:
    """Up to `limit` bytes of a stream, in chunks.

    One read(limit) would allocate the whole budget (100 MiB by default) for every file, which
    costs three times the read of a small face image.
    """
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


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The grouping key of a file without content (unreadable, empty, over the byte budget): its own
# path after a NUL, which no hex digest starts with, so that such files are never copies.
_NO_CONTENT = "\x00"


class HashContent(beam.DoFn):
    """SourceImage -> (content key, SourceImage): the key is the sha256 of the bytes.

    Files without content are keyed by their own path, so they are grouped with nothing. The
    value is the source itself: a path and a label (and in-memory bytes only for sources that
    already carried them), never the file's content.
    """

    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes

    def process(self, source: schema.SourceImage):
        data, _ = read_bytes(source, self._max_bytes)
        yield (sha256_hex(data) if data else _NO_CONTENT + source.path), source


def find_copies(sha256: str, members) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """The verdicts for one content hash: ((path, sha256), (status, duplicate_of)) per copy.

    Unique images get no entry (so the side input holds copies only). Under two or more
    labels every copy is a label conflict; under one label the shortest path (then the first
    in order: "img.jpg" before "img(1).jpg") is the original and the others are duplicates.
    """
    members = sorted(set(members), key=lambda member: (len(member[0]), member))
    if len(members) < 2:
        return []
    if len({label for _, label in members}) > 1:
        return [((path, sha256), (imaging.LABEL_CONFLICT, "")) for path, _ in members]
    original = members[0][0]
    return [((path, sha256), (imaging.DUPLICATE, original)) for path, _ in members[1:]]


def manifest_row(
    source: schema.SourceImage,
    info: imaging.ImageInfo,
    sha256: str = "",
    split: str = "",
    size: int | None = None,
    duplicate_of: str = "",
) -> dict:
    """One manifest row (a dict with MANIFEST_COLUMNS keys) for one input file."""
    return {
        "path": source.path,
        "label": source.label,
        "status": info.status,
        "reason": info.reason,
        "split": split,
        "sha256": sha256,
        "width": info.width or "",
        "height": info.height or "",
        "format": info.format,
        "mode": info.mode,
        "orientation": info.orientation if info.width else "",
        "grayscale": "" if info.grayscale is None else info.grayscale,
        "brightness": "" if info.brightness is None else info.brightness,
        "face": "" if info.face is None else info.face,
        "bytes": "" if size is None else size,
        "duplicate_of": duplicate_of,
    }


class ValidateImages(beam.DoFn):
    """(content key, the SourceImages with those bytes) -> cleaned images and manifest rows.

    Reads each file again, validates, normalises and resizes it, and assigns its split. Main
    output: schema.CleanImage for accepted images. Tagged output MANIFEST: exactly one row per
    input, REJECTED (with a reason from imaging.REASONS), DUPLICATE or ACCEPTED. Copies are
    judged by find_copies on the group; the bytes are re-hashed on this read, so a file that
    changed since it was hashed is judged on its own. Identical bytes are cleaned once.
    """

    ACCEPTED = "accepted"
    MANIFEST = "manifest"

    def __init__(self, options: imaging.CleaningOptions):
        self._options = options

    def setup(self):
        imaging.keep_freed_memory()

    def process(self, group):
        key, sources = group
        sources = list(sources)
        verdicts = dict(find_copies(key, [(source.path, source.label) for source in sources]))
        cleaned = {}  # sha256 -> (image, info): copies are decoded once
        for source in sources:
            data, reason = read_bytes(source, self._options.max_file_bytes)
            if data is None:
                yield self._reject(source, imaging.ImageInfo(imaging.REJECTED, reason))
                continue
            sha256 = sha256_hex(data)
            if sha256 not in cleaned:
                cleaned[sha256] = imaging.clean_image_bytes(data, self._options)
            image, info = cleaned[sha256]
            verdict = verdicts.get((source.path, sha256), (None, ""))
            yield from self._judge(source, image, info, sha256, len(data), *verdict)

    def _judge(self, source, image, info, sha256, size, verdict, duplicate_of):
        if info.status == imaging.REJECTED:
            yield self._reject(source, info, sha256, size)
            return
        split = splits.assign_split(sha256, self._options.split_fractions)
        if verdict == imaging.LABEL_CONFLICT:
            info = info._replace(status=imaging.REJECTED, reason=imaging.LABEL_CONFLICT)
            yield self._reject(source, info, sha256, size)
            return
        if verdict == imaging.DUPLICATE:
            info = info._replace(status=imaging.DUPLICATE)
            row = manifest_row(source, info, sha256, split, size, duplicate_of)
            _count(imaging.DUPLICATE)
            yield beam.pvalue.TaggedOutput(self.MANIFEST, row)
            return
        _count(imaging.ACCEPTED)
        yield beam.pvalue.TaggedOutput(
            self.MANIFEST, manifest_row(source, info, sha256, split, size)
        )
        yield schema.CleanImage(
            path=source.path,
            label=source.label,
            sha256=sha256,
            split=split,
            image=image,
            width=info.width,
            height=info.height,
            format=info.format,
        )

    def _reject(self, source, info, sha256="", size=None):
        _count(f"{imaging.REJECTED}_{info.reason}")
        return beam.pvalue.TaggedOutput(self.MANIFEST, manifest_row(source, info, sha256, "", size))


@functools.cache
def _counter(name: str):
    return beam.metrics.Metrics.counter(_METRICS_NAMESPACE, name)


def _count(name: str) -> None:
    """Adds one to a Beam counter (shown by runners like Dataflow, and in the result's metrics)."""
    _counter(name).inc()


class CleanImages(beam.PTransform):
    """SourceImages -> {"accepted": CleanImage, "manifest": one row dict per input}.

    Steps: HashContents (read, sha256) -> GroupByContent (small records: the content hash and
    the source's path and label) -> ValidateImages (per group: exact copies and label
    conflicts by find_copies, then read again, imaging.clean_image_bytes, content-hash split).
    The decoded images stay inside the stage that makes them, so that whatever consumes them
    (TFRecord encoding, counting) fuses with it.
    """

    def __init__(self, options: imaging.CleaningOptions = imaging.DEFAULT_OPTIONS):
        super().__init__()
        self._options = options

    def expand(self, sources):
        results = (
            sources
            | "HashContents" >> beam.ParDo(HashContent(self._options.max_file_bytes))
            | "GroupByContent" >> beam.GroupByKey()
            | "ValidateImages"
            >> beam.ParDo(ValidateImages(self._options)).with_outputs(
                ValidateImages.MANIFEST, main=ValidateImages.ACCEPTED
            )
        )
        return {
            "accepted": results[ValidateImages.ACCEPTED],
            "manifest": results[ValidateImages.MANIFEST],
        }


# ---------------------------------------------------------------------------------------------
# Writing the outputs.


def write_atomically(path: str, data: bytes) -> None:
    """Writes `data` beside `path`, then renames it into place (readers never see half)."""
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(
        temporary, compression_type=filesystem.CompressionTypes.UNCOMPRESSED
    ) as stream:
        stream.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temporary], [path])


def encode_png(image) -> bytes:
    """PNG bytes of a uint8 RGB array (lossless: what the TFRecords and images/ hold)."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("OpenCV could not encode a PNG")
    return encoded.tobytes()


def image_path(output: str, split: str, label: str, source_path: str, sha256: str) -> str:
    """Where an accepted image's PNG goes: OUT/images/<split>/<label>/<stem>-<hash>.png.

    The original name's stem keeps it readable, the start of the content hash keeps it unique.
    """
    stem = os.path.splitext(posixpath.basename(source_path.rstrip("/")))[0]
    stem = _NAME_UNSAFE.sub("_", stem).strip("._")[:80] or "image"
    return FileSystems.join(output, IMAGES_DIR, split, label, f"{stem}-{sha256[:12]}.png")


def to_example(clean: schema.CleanImage, png: bytes) -> bytes:
    """A serialized tf.train.Example with the FEATURES of example_feature_spec().

    Through `example_proto`, the same message without TensorFlow's import (seconds per Beam
    worker process).
    """
    height, width = clean.image.shape[:2]
    return example_proto.example(
        {
            "image/encoded": png,
            "image/format": b"png",
            "image/height": height,
            "image/width": width,
            "label": schema.label_id(clean.label),
            "label/text": clean.label.encode(),
            "sha256": clean.sha256.encode(),
            "split": clean.split.encode(),
            "filename": clean.path.encode(),
        }
    )


def example_feature_spec() -> dict:
    """The tf.io.parse_example spec of the TFRecords under OUT/tfrecords/<split>-*.tfrecord."""
    import tensorflow as tf

    spec = {key: tf.io.FixedLenFeature([], tf.string) for key in _STRING_FEATURES}
    spec.update({key: tf.io.FixedLenFeature([], tf.int64) for key in _INT_FEATURES})
    return spec


_STRING_FEATURES = ("image/encoded", "image/format", "label/text", "sha256", "split", "filename")
_INT_FEATURES = ("image/height", "image/width", "label")


class EncodeExamples(beam.DoFn):
    """CleanImage -> (split, serialized tf.train.Example); also writes the PNG to images/."""

    def __init__(self, output: str, write_images: bool):
        self._output = output
        self._write_images = write_images

    def process(self, clean: schema.CleanImage):
        png = encode_png(clean.image)
        if self._write_images:
            path = image_path(self._output, clean.split, clean.label, clean.path, clean.sha256)
            write_atomically(path, png)
        yield clean.split, to_example(clean, png)


class WriteTFRecords(beam.PTransform):
    """(split, serialized Example) -> OUT/tfrecords/<split>-SSSSS-of-NNNNN.tfrecord per split."""

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def expand(self, examples):
        by_split = examples | "BySplit" >> beam.Partition(
            lambda keyed, _: splits.SPLITS.index(keyed[0]), len(splits.SPLITS)
        )
        written = {}
        for split, pcollection in zip(splits.SPLITS, by_split, strict=True):
            prefix = FileSystems.join(self._output, TFRECORDS_DIR, split)
            written[split] = (
                pcollection
                | f"Drop{split.title()}Key" >> beam.Values()
                | f"Write{split.title()}"
                >> beam.io.WriteToTFRecord(prefix, file_name_suffix=".tfrecord")
            )
        return written


class WriteExamples(beam.PTransform):
    """CleanImages -> OUT/tfrecords/<split>-*.tfrecord, and OUT/images/ PNGs if asked."""

    def __init__(self, output: str, write_images: bool = True):
        super().__init__()
        self._output = output
        self._write_images = write_images

    def expand(self, images):
        return (
            images
            | "EncodeExamples" >> beam.ParDo(EncodeExamples(self._output, self._write_images))
            | "WriteTFRecords" >> WriteTFRecords(self._output)
        )


def manifest_csv(rows: list[dict]) -> bytes:
    """The manifest as CSV bytes, sorted by path, MANIFEST_COLUMNS in order."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda row: (row["path"], row["label"])))
    return text.getvalue().encode("utf-8")


class WriteManifest(beam.PTransform):
    """Manifest rows -> OUT/manifest.csv, one file, sorted, written aside and renamed."""

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def expand(self, rows):
        path = FileSystems.join(self._output, MANIFEST_FILE)
        return (
            rows
            | "CollectRows" >> beam.combiners.ToList()
            | "WriteCsv"
            >> beam.Map(lambda collected: write_atomically(path, manifest_csv(collected)))
        )


def read_manifest(output: str) -> list[dict]:
    """The rows of OUT/manifest.csv (all values as strings)."""
    path = FileSystems.join(output, MANIFEST_FILE)
    with FileSystems.open(path, compression_type=filesystem.CompressionTypes.UNCOMPRESSED) as f:
        return list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8")))


# ---------------------------------------------------------------------------------------------
# The CLI stage.


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreprocessConfig(imaging.CleaningOptions):
    """`happysad preprocess`: the cleaning options (inherited) plus inputs and outputs."""

    input: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "folder or Beam URI (gs://, s3://) with happy/ and sad/ sub-folders; "
            "omit it for the built-in synthetic faces"
        },
    )
    output: str = dataclasses.field(
        metadata={"help": "output folder or URI: manifest.csv, summary.json, report, images"}
    )
    num_synthetic: int = dataclasses.field(
        default=1000, metadata={"help": "number of synthetic faces when --input is omitted"}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the synthetic faces"})
    write_images: bool = dataclasses.field(
        default=True, metadata={"help": "also write the accepted images as PNG under images/"}
    )
    report: bool = dataclasses.field(
        default=True, metadata={"help": "write report.md with plots after the pipeline"}
    )
    beam_args: tuple[str, ...] = dataclasses.field(
        default=(),
        metadata={"help": "Beam pipeline options", "passthrough": True},
    )


def build_pipeline(root: beam.Pipeline, config: PreprocessConfig) -> None:
    """Adds the whole preprocessing graph to `root`."""
    options = imaging.options_from(config)
    if config.input is None:
        from pipeline import synthetic_faces  # lazily: only needed without --input

        sources = root | "RenderSyntheticFaces" >> synthetic_faces.RenderSyntheticFaces(
            config.num_synthetic, config.seed
        )
    else:
        sources = root | "ListLabelledFiles" >> ListLabelledFiles(config.input)
    cleaned = sources | "CleanImages" >> CleanImages(options)
    _ = cleaned["accepted"] | "WriteExamples" >> WriteExamples(config.output, config.write_images)
    _ = cleaned["manifest"] | "WriteManifest" >> WriteManifest(config.output)


def run(config: PreprocessConfig) -> dict:
    """Runs the pipeline, then writes summary.json (last: it marks completion) and the report.

    Returns:
      The summary: counts by status, reason, label and split, input_files, warnings, outputs.
    """
    from pipeline import report  # lazily: matplotlib is only needed here

    if config.input is None and config.num_synthetic < 2:
        raise errors.UserError("--num-synthetic must be at least 2 (one face per label)")
    options = beam_options.from_args(config.beam_args)
    root = beam.Pipeline(runner=beam_options.runner_for(options), options=options)
    build_pipeline(root, config)  # lists the input: a wrong folder fails before anything is deleted
    _clear_previous_outputs(config.output)
    root.run().wait_until_finish()
    rows = read_manifest(config.output)
    summary = report.summarize(rows)
    summary["warnings"] = report.find_shortcuts(rows)
    summary["options"] = dataclasses.asdict(imaging.options_from(config))
    summary["outputs"] = {
        "manifest": FileSystems.join(config.output, MANIFEST_FILE),
        "tfrecords": FileSystems.join(config.output, TFRECORDS_DIR),
        "images": FileSystems.join(config.output, IMAGES_DIR) if config.write_images else None,
        "report": None,
    }
    if config.report:
        summary["outputs"]["report"] = report.write_report(config.output, rows, summary)
    for warning in summary["warnings"]:
        logger.warning("Shortcut: %s", warning)
    write_atomically(
        FileSystems.join(config.output, SUMMARY_FILE), report.summary_json(summary).encode()
    )
    logger.info("Preprocessed %d files: %s", summary["input_files"], summary["status"])
    return summary


def _clear_previous_outputs(output: str) -> None:
    """Removes a previous run's outputs, summary.json first, so no stale file survives."""
    from pipeline import report

    names = (SUMMARY_FILE, MANIFEST_FILE, report.REPORT_FILE, report.PLOTS_DIR)
    for name in names + (IMAGES_DIR, TFRECORDS_DIR):
        path = FileSystems.join(output, name)
        if _is_local(path):
            stale = [path] if os.path.lexists(path) else []
        else:  # object stores have no folders: delete the object and everything under it
            matches = FileSystems.match([path, path + "/**"])
            stale = [meta.path for match in matches for meta in match.metadata_list]
        if stale:
            logger.info("Replacing %s", path)
            FileSystems.delete(stale)
