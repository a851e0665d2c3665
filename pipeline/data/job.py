"""THE data job: one Beam pipeline from files to examples, manifest, summary and report.

    sources (ListImages, or RenderSyntheticFaces)
      │ HashContents: read, sha256                     (small records only from here on)
      │ GroupByContent: the files sharing bytes        (exact copies, label conflicts)
      │ ValidateImages: read again, transform.transform once per content, split by hash
      ├─► accepted CleanImage ──► (the TFDS builder's examples)
      └─► one manifest row per input file
            ├─► WriteManifest: OUT/manifest.csv, sorted by path (sorted shards, then merged)
            └─► Statistics (a CombineFn) ─┐
      samples of accepted/rejected ───────┴─► WriteReport: OUT/report.md, plots/, summary.json

`happysad build`, `happysad run` and `tfds build` run it inside the TFDS builder (OUT is the
dataset version's folder, so the report lies beside the data it describes and appears with it
atomically); `happysad preprocess` runs it alone, writing no dataset. Nothing gathers the rows
or the images of the whole folder in one place: the manifest is merged from sorted shards
one line at a time, and the report is drawn from mergeable counts and fixed-size samples.
"""

import contextlib
import csv
import functools
import hashlib
import heapq
import io
import json
import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline import artifacts, contract
from pipeline import config as config_lib
from pipeline.data import report, schema, sources, splits, validate

# The manifest: one row per input file, in this column order.
MANIFEST_COLUMNS = (
    "path",
    "label",
    "status",
    "reason",
    "detail",
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
METRICS_NAMESPACE = "happysad"
_MANIFEST_SHARDS = 16
_MAX_BATCH = 16  # files transformed in one graph call: one image decoded at a time
_MANIFEST_PARTS = "manifest.parts"
# The grouping key of a file without content (unreadable, empty, over the byte budget): its own
# path after a NUL, which no hex digest starts with, so that such files are never copies.
_NO_CONTENT = "\x00"

logger = logging.getLogger(__name__)


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of a file's bytes: the example key, the dedupe key and the split's seed."""
    return hashlib.sha256(data).hexdigest()


class HashContent(beam.DoFn):
    """SourceImage -> (content key, SourceImage): the key is the sha256 of the bytes.

    Files without content are keyed by their own path, so they are grouped with nothing. The
    value is the source itself: a path and a label (and in-memory bytes only for sources that
    already carried them), never the file's content.
    """

    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes

    def process(self, source: schema.SourceImage):
        data, _ = sources.read_bytes(source, self._max_bytes)
        yield (sha256_hex(data) if data else _NO_CONTENT + source.path), source


def find_copies(sha256: str, members) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """The verdicts for one content hash: ((path, sha256), (status, duplicate_of)) per copy.

    Unique images get no entry. Under two or more labels every copy is a label conflict,
    whose second value is the first copy filed under another label (shortest path first);
    under one label the shortest path (then the first in order: "img.jpg" before
    "img(1).jpg") is the original and the others are duplicates.
    """
    members = sorted(set(members), key=lambda member: (len(member[0]), member))
    if len(members) < 2:
        return []
    if len({label for _, label in members}) > 1:
        return [
            ((path, sha256), (validate.LABEL_CONFLICT, _other_label_copy(members, label)))
            for path, label in members
        ]
    original = members[0][0]
    return [((path, sha256), (validate.DUPLICATE, original)) for path, _ in members[1:]]


def _other_label_copy(members: list[tuple[str, str]], label: str) -> str:
    return next(path for path, other in members if other != label)


def manifest_row(
    source: schema.SourceImage,
    info: validate.ImageInfo,
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
        "detail": info.detail,
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
    """Batches of (content key, the SourceImages with those bytes) -> images and manifest rows.

    Reads each file again and runs THE transform on every distinct content of the batch in
    one graph call (`transform.Transformer.many`), then judges each file (validate.judge) and
    assigns its split. Main output: CleanImage for accepted images. Tagged output MANIFEST:
    exactly one row per input, REJECTED (with a reason from validate.REASONS), DUPLICATE or
    ACCEPTED. The bytes are re-hashed on this read, so a file that changed since it was
    hashed is judged on its own; identical bytes are transformed once. TensorFlow runs on one
    thread per worker: the job's parallelism is its workers (--direct_num_workers, Dataflow's
    workers, Dask's), not TensorFlow's thread pool competing with them for the cores.
    """

    ACCEPTED = "accepted"
    MANIFEST = "manifest"

    def __init__(self, data: config_lib.DataConfig):
        self._data = data
        self._transformer = None
        self._faces = None

    def setup(self):
        _one_tensorflow_thread()
        # Imported here: the workers run TensorFlow, the driver that builds the job does not.
        from pipeline.data import transform

        self._transformer = transform.Transformer(self._data.transform)
        self._faces = validate.FaceFinder()

    def process(self, groups):
        pending = []  # (source, data, sha256, verdict) of every readable file
        for key, members in groups:
            members = list(members)
            verdicts = dict(find_copies(key, [(member.path, member.label) for member in members]))
            for source in members:
                data, reason = sources.read_bytes(source, self._data.max_file_bytes)
                if data is None:
                    yield self._reject(source, validate.ImageInfo(validate.REJECTED, reason))
                    continue
                sha256 = sha256_hex(data)
                pending.append((source, data, sha256, verdicts.get((source.path, sha256))))
        distinct = {}
        for _, data, sha256, _ in pending:
            distinct.setdefault(sha256, data)
        results = dict(zip(distinct, self._transformer.many(list(distinct.values())), strict=True))
        for source, data, sha256, verdict in pending:
            image, info = validate.judge(results[sha256])
            yield from self._decide(
                source, image, info, sha256, len(data), *(verdict or (None, ""))
            )

    def _decide(self, source, image, info, sha256, size, verdict, duplicate_of):
        if info.status == validate.REJECTED:
            yield self._reject(source, info, sha256, size)
            return
        split = splits.assign_split(sha256, self._data.split_fractions)
        if verdict == validate.LABEL_CONFLICT:
            info = info._replace(
                status=validate.REJECTED,
                reason=validate.LABEL_CONFLICT,
                detail=f"the same bytes are also {duplicate_of}",
            )
            yield self._reject(source, info, sha256, size)
            return
        if verdict == validate.DUPLICATE:
            info = info._replace(status=validate.DUPLICATE)
            row = manifest_row(source, info, sha256, split, size, duplicate_of)
            _count(validate.DUPLICATE)
            yield beam.pvalue.TaggedOutput(self.MANIFEST, row)
            return
        _count(validate.ACCEPTED)
        if validate.in_face_sample(sha256):
            info = info._replace(face=self._faces(image))
        yield beam.pvalue.TaggedOutput(
            self.MANIFEST, manifest_row(source, info, sha256, split, size)
        )
        yield schema.CleanImage(source.path, source.label, sha256, split, image)

    def _reject(self, source, info, sha256="", size=None):
        _count(f"{validate.REJECTED}_{info.reason}")
        return beam.pvalue.TaggedOutput(self.MANIFEST, manifest_row(source, info, sha256, "", size))


def _one_tensorflow_thread() -> None:
    """One intra-op and one inter-op thread, if TensorFlow is not running yet in this process."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised (an in-process runner): keep its settings
        pass


@functools.cache
def _counter(name: str):
    return beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)


def _count(name: str) -> None:
    """Adds one to a Beam counter (shown by runners like Dataflow, and in the result's metrics)."""
    _counter(name).inc()


class CleanImages(beam.PTransform):
    """SourceImages -> {"accepted": CleanImage, "manifest": one row dict per input file}."""

    def __init__(self, data: config_lib.DataConfig):
        super().__init__()
        self._data = data

    def expand(self, images):
        results = (
            images
            | "HashContents" >> beam.ParDo(HashContent(self._data.max_file_bytes))
            | "GroupByContent" >> beam.GroupByKey()
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=_MAX_BATCH)
            | "ValidateImages"
            >> beam.ParDo(ValidateImages(self._data)).with_outputs(
                ValidateImages.MANIFEST, main=ValidateImages.ACCEPTED
            )
        )
        return {
            "accepted": results[ValidateImages.ACCEPTED],
            "manifest": results[ValidateImages.MANIFEST],
        }


# The manifest: sorted shards, merged into one file a line at a time.


def manifest_line(row: dict) -> str:
    """One CSV line (no newline) of a manifest row, MANIFEST_COLUMNS in order (RFC 4180)."""
    text = io.StringIO()
    # csv quotes a field only for the line terminator's characters: "\r\n" makes it quote a
    # file name holding a line break, which an empty terminator would leave bare.
    csv.writer(text, lineterminator="\r\n").writerow([row[name] for name in MANIFEST_COLUMNS])
    return text.getvalue().removesuffix("\r\n")


def _sort_key(row: dict) -> tuple[str, str]:
    return row["path"], row["label"]


def _write_sorted_shard(element, parts_dir: str) -> str:
    """Writes one shard's rows sorted, a JSON [path, label, csv line] per line; returns its path.

    JSON escapes tabs and line breaks, which file names may hold.
    """
    shard, rows = element
    lines = sorted([*_sort_key(row), manifest_line(row)] for row in rows)
    path = FileSystems.join(parts_dir, f"part-{shard:05d}")
    artifacts.write_text(path, "".join(json.dumps(line) + "\n" for line in lines))
    return path


def _merge_shards(paths: list[str], output_dir: str) -> str:
    """Merges sorted shards into OUT/manifest.csv: a header, then every row in path order.

    A k-way merge that holds one line per shard: the folder's size never lands in memory.
    """
    path = FileSystems.join(output_dir, contract.MANIFEST_FILE)
    with contextlib.ExitStack() as stack:
        streams = [
            io.TextIOWrapper(stack.enter_context(FileSystems.open(part)), encoding="utf-8")
            for part in sorted(paths)
        ]
        merged = (entry[2] + "\n" for entry in heapq.merge(*map(_entries, streams), key=_entry_key))

        def write(temporary: str) -> None:
            with open(temporary, "w", encoding="utf-8", newline="") as handle:
                handle.write(",".join(MANIFEST_COLUMNS) + "\n")
                handle.writelines(merged)

        if artifacts.is_local(path):
            artifacts.write_with(path, write)
        else:
            with FileSystems.create(path) as stream, io.TextIOWrapper(stream, "utf-8") as text:
                text.write(",".join(MANIFEST_COLUMNS) + "\n")
                text.writelines(merged)
    # Locally the folder goes whole: FileSystems.delete globs its paths, and an output folder
    # named like "clean [run 1]" is no pattern that matches itself.
    if artifacts.is_local(output_dir):
        artifacts.remove(FileSystems.join(output_dir, _MANIFEST_PARTS))
    elif paths:
        FileSystems.delete(sorted(paths))
    return path


def _entries(stream):
    return (json.loads(line) for line in stream)


def _entry_key(entry: list) -> list:
    return entry[:2]


class WriteManifest(beam.PTransform):
    """Manifest rows -> OUT/manifest.csv, sorted by path, written aside and renamed."""

    def __init__(self, output_dir: str, shards: int = _MANIFEST_SHARDS):
        super().__init__()
        self._output_dir = output_dir
        self._shards = shards

    def expand(self, rows):
        parts_dir = FileSystems.join(self._output_dir, _MANIFEST_PARTS)
        shards = self._shards
        shard_paths = (
            rows
            | "ByShard"
            >> beam.Map(lambda row: (int(sha256_hex(row["path"].encode())[:8], 16) % shards, row))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.Map(_write_sorted_shard, parts_dir)
        )
        return (
            rows.pipeline
            | "Start" >> beam.Create([None])
            | "MergeShards"
            >> beam.Map(
                lambda _, paths: _merge_shards(paths, self._output_dir),
                beam.pvalue.AsList(shard_paths),
            )
        )


def read_manifest(output_dir: str) -> list[dict]:
    """The rows of OUT/manifest.csv (all values as strings)."""
    text = artifacts.read_bytes(FileSystems.join(output_dir, contract.MANIFEST_FILE))
    return list(csv.DictReader(io.StringIO(text.decode("utf-8"))))


# The whole job.


class DataJob(beam.PTransform):
    """The data job of `data` (data.input None: `num_images` synthetic faces from `seed`).

    Writes OUT/manifest.csv, OUT/summary.json, OUT/report.md and OUT/plots/. Returns the
    accepted CleanImages; the TFDS builder turns them into examples.
    """

    def __init__(self, data: config_lib.DataConfig, seed: int, output_dir: str):
        super().__init__()
        self._data = data
        self._seed = seed
        self._output_dir = output_dir

    def expand(self, pbegin):
        data = self._data
        if data.input is None:
            # Imported for this source only: OpenCV draws the faces.
            from pipeline.data import synthetic_faces

            images = pbegin | "RenderSyntheticFaces" >> synthetic_faces.RenderSyntheticFaces(
                data.num_images, self._seed
            )
        else:
            images = pbegin | "ListImages" >> sources.ListImages(data.input)
        cleaned = images | "CleanImages" >> CleanImages(data)
        manifest = cleaned["manifest"] | "WriteManifest" >> WriteManifest(self._output_dir)
        _ = {
            "rows": cleaned["manifest"],
            "accepted": cleaned["accepted"],
            "manifest": manifest,
        } | "WriteReport" >> report.WriteReport(self._output_dir, data)
        return cleaned["accepted"]
