"""What every benchmark returns: rows of a figure measured against a baseline from the same run."""

import dataclasses
import os
import platform
import subprocess
import sys
import threading
import time
import typing

import numpy as np
import psutil


@dataclasses.dataclass(frozen=True)
class Row:
    """One measured figure and the baseline it is compared with (same process, same data)."""

    benchmark: str
    figure: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    target: str = ""
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value:
            return None
        return self.value / self.baseline_value


def machine() -> str:
    """CPU model and core count, for the results table."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def shared_faces_dir() -> str | None:
    """../shared/data/faces beside the checkout, when present (benchmarks may use it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.normpath(os.path.join(here, "..", "..", "shared", "data", "faces"))
    return path if os.path.isdir(path) else None


# The benchmarks' image folder: one generator for every benchmark that needs files on disk.

PHOTO_SIZES = ((3000, 2000), (3600, 2400), (4000, 3000))  # 6, 8.6 and 12 megapixels
PHOTO_EVERY = 20  # one file in 20 (5%) is a photo
ORIENTATION_TAG = 0x0112  # EXIF Orientation
_SYNTHETIC_SOURCES = 32  # drawn faces per label when ../shared is absent


def face_folder(folder: str, count: int) -> list[str]:
    """`count` JPEG files under folder/happy and folder/sad, every one with distinct bytes.

    File i is the same whatever `count` (its own random generator), so the first n files of
    a bigger folder are a smaller one. One file in PHOTO_EVERY (5%) is a 6 to 12 megapixel
    photo (the face enlarged, with grain; every other photo carries EXIF orientation 6, as
    phones write them); the others are small faces (64 to 250 px wide) with a random crop,
    mirror, size, brightness and contrast. The faces are ../shared/data/faces when present,
    else the project's drawn faces (pipeline.data.synthetic_faces). A folder made before
    (its `.complete-<count>` marker beside it) is reused; give each count its own folder, as
    the data job reads every file there.

    Returns:
        The paths, in file order.
    """
    paths = [_face_path(folder, index) for index in range(count)]
    marker = f"{folder.rstrip('/')}.complete-{count}"
    if os.path.exists(marker):
        return paths
    import hashlib

    sources, seen = _face_sources(), set()
    for index, path in enumerate(paths):
        label = os.path.basename(os.path.dirname(path))
        rng = np.random.default_rng([index, 7])
        while True:  # a re-draw in the (unlikely) case of bytes already written
            data = _variant(sources[label], index, rng)
            digest = hashlib.sha256(data).digest()
            if digest not in seen:
                break
        seen.add(digest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as stream:
            stream.write(data)
        os.replace(path + ".tmp", path)
    with open(marker, "w", encoding="utf-8") as stream:
        stream.write(f"{count} files\n")
    return paths


def scratch_face_folder(workdir: str, count: int) -> list[str]:
    """face_folder(count) in the run's scratch folder (the parent of a benchmark's workdir).

    The benchmarks of one run.py run that read a folder of the same size share it.
    """
    parent = os.path.dirname(os.path.abspath(workdir))
    return face_folder(os.path.join(parent, f"faces_{count}"), count)


def folder_root(path: str) -> str:
    """The folder that holds the happy/ or sad/ folder of a face_folder file."""
    return os.path.dirname(os.path.dirname(path))


def is_photo(path: str) -> bool:
    """Whether a face_folder file is one of its multi-megapixel photos."""
    return os.path.basename(path).startswith("photo_")


def subset_folder(paths: list[str], folder: str) -> list[str]:
    """A folder holding hard links to `paths` (face_folder files), in the same layout."""
    linked = []
    for path in paths:
        target = os.path.join(
            folder, os.path.basename(os.path.dirname(path)), os.path.basename(path)
        )
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.link(path, target)
        linked.append(target)
    return linked


def _face_path(folder: str, index: int) -> str:
    photo = index % PHOTO_EVERY == PHOTO_EVERY - 1
    label = ("happy", "sad")[(index + index // PHOTO_EVERY) % 2]  # photos of both labels
    return os.path.join(folder, label, f"{'photo' if photo else 'face'}_{index:05d}.jpg")


def _face_sources():
    """{label: [RGB PIL images]}: the shared faces, else drawn ones."""
    import glob

    from PIL import Image

    root = shared_faces_dir()
    if root is not None:
        return {
            label: [
                Image.open(path).convert("RGB")
                for path in sorted(glob.glob(os.path.join(root, label, "*.jpg")))
            ]
            for label in ("happy", "sad")
        }
    from pipeline.data import synthetic_faces

    return {
        label: [
            Image.fromarray(synthetic_faces.render_face(index, label, 250))
            for index in range(_SYNTHETIC_SOURCES)
        ]
        for label in ("happy", "sad")
    }


def _variant(faces: list, index: int, rng: np.random.Generator) -> bytes:
    """JPEG bytes of a perturbed copy of one of `faces` (a photo for every PHOTO_EVERY-th)."""
    import io

    from PIL import Image

    face = faces[int(rng.integers(len(faces)))]
    crop = rng.uniform(0.75, 1.0)
    width, height = int(face.width * crop), int(face.height * crop)
    left = int(rng.integers(0, face.width - width + 1))
    top = int(rng.integers(0, face.height - height + 1))
    face = face.crop((left, top, left + width, top + height))
    if rng.random() < 0.5:
        face = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    photo = index % PHOTO_EVERY == PHOTO_EVERY - 1
    options = {"quality": 90}
    if photo:
        size = PHOTO_SIZES[index // PHOTO_EVERY % len(PHOTO_SIZES)]
        face = face.resize(size, Image.Resampling.BICUBIC)
        grain = rng.integers(-5, 6, (size[1], size[0], 3), dtype=np.int16)
        pixels = np.asarray(face, np.int16) + grain
        if index // PHOTO_EVERY % 2:
            exif = Image.Exif()
            exif[ORIENTATION_TAG] = 6
            options["exif"] = exif.tobytes()
    else:
        side = int(rng.integers(64, 251))
        face = face.resize((side, int(side * rng.uniform(0.9, 1.25))), Image.Resampling.BICUBIC)
        pixels = np.asarray(face, np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


# Commands run as a user runs them: a new process, its wall clock and peak memory.

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND_ENVIRONMENT = {"PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
SAMPLE_SECONDS = 0.1  # how often a command's memory is sampled


class Measured(typing.NamedTuple):
    """One command's wall clock and peak memory (summed over its process tree)."""

    seconds: float
    rss_mib: float  # resident pages, shared ones counted in every process that maps them
    pss_mib: float  # proportional: a page shared by n processes counts 1/n in each


def happysad(arguments: list[str], log_path: str) -> Measured:
    """The wall clock and peak memory of `happysad ARGUMENTS` (this checkout's) in a new process.

    Its output goes to `log_path`.

    Raises:
        RuntimeError: the command failed.
    """
    command = [sys.executable, "-m", "pipeline.cli", *arguments]
    with open(log_path, "w", encoding="utf-8") as log:
        start = time.perf_counter()
        process = subprocess.Popen(
            command, env={**os.environ, **COMMAND_ENVIRONMENT}, stdout=log, stderr=subprocess.STDOUT
        )
        rss, pss = _sample_peak_memory(process)
        seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}): see {log_path}")
    return Measured(seconds, rss / 2**20, pss / 2**20)


def _sample_peak_memory(process: subprocess.Popen) -> tuple[int, int]:
    """The largest summed (RSS, PSS) in bytes of the process and its descendants until it exits."""
    peak, done = [0, 0], threading.Event()
    root = psutil.Process(process.pid)

    def sample():
        while not done.is_set():
            try:
                members = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            totals = [0, 0]
            for member in members:
                try:
                    memory = member.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                totals[0] += memory.rss
                totals[1] += memory.pss
            peak[:] = [max(old, new) for old, new in zip(peak, totals, strict=True)]
            done.wait(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    process.wait()
    done.set()
    sampler.join()
    return peak[0], peak[1]
