"""Image files as users have them: every format, mode and fault, made here (never downloaded).

`awkward_files()` is a scraped-looking happy/ sad/ folder: photos in every accepted format and
mode, exact copies, a label conflict, truncated and empty files, web pages and notes saved
under image names, a decompression bomb, tiny and banner-shaped pictures, and formats the
serving graph cannot decode. Each file comes with the verdict any correct data job gives it
(status and reason), whatever transform implements the pixels.
"""

import gzip
import hashlib
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

ACCEPTED, REJECTED, DUPLICATE = "accepted", "rejected", "duplicate"


def photo(width: int = 96, height: int = 80, seed: int = 0) -> np.ndarray:
    """A smooth colourful uint8 RGB picture (height, width, 3); every seed gives other bytes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [
        127
        + 120 * np.sin(x / rng.uniform(5, 15) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(8, 20))
        for _ in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def encode(picture, image_format: str, **params) -> bytes:
    """A numpy array or PIL image encoded by Pillow in `image_format`."""
    buffer = io.BytesIO()
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def bomb_png(side: int = 30_000) -> bytes:
    """A valid 1-bit PNG whose header claims side x side pixels, with little pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + side // 8) * 100)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def ppm(width: int = 96, height: int = 80, seed: int = 0) -> bytes:
    """A binary Netpbm PPM (P6) picture, as image tools and old scanners write it."""
    return f"P6\n{width} {height}\n255\n".encode() + photo(width, height, seed).tobytes()


def animated_gif(seeds=(5, 6)) -> bytes:
    frames = [Image.fromarray(photo(seed=seed)) for seed in seeds]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def rotated_jpeg(seed: int = 7) -> bytes:
    """A 120x80 JPEG whose EXIF orientation 6 displays it 80 wide and 120 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(photo(120, 80, seed=seed), "JPEG", exif=exif.tobytes())


def awkward_files() -> dict[str, tuple[bytes, str, str]]:
    """{relative path: (content, status, reason)} of a scraped-looking happy/ sad/ folder.

    Copies: the shortest path is the original, the others duplicates; the same bytes under
    both labels are a label conflict everywhere.
    """
    smile = encode(photo(seed=1), "JPEG", quality=90)
    both = encode(photo(seed=2), "PNG")
    truncated = encode(photo(seed=3), "JPEG")[:-300]
    sixteen_bit = (photo(seed=4)[:, :, 0].astype(np.uint16) * 257).astype(np.uint16)
    with_alpha = np.dstack([photo(seed=14), np.full((80, 96), 128, np.uint8)])
    return {
        "happy/smile.jpg": (smile, ACCEPTED, ""),
        "happy/smile(1).jpg": (smile, DUPLICATE, ""),
        "happy/nested/deeper/grin.png": (encode(photo(seed=10), "PNG"), ACCEPTED, ""),
        "happy/no_extension": (encode(photo(seed=11), "JPEG"), ACCEPTED, ""),
        "happy/actually_a_jpeg.png": (encode(photo(seed=12), "JPEG"), ACCEPTED, ""),
        "happy/gray.png": (encode(photo(seed=13)[:, :, 1], "PNG"), ACCEPTED, ""),
        "happy/alpha.png": (encode(with_alpha, "PNG"), ACCEPTED, ""),
        "happy/cmyk.jpg": (
            encode(Image.fromarray(photo(seed=15)).convert("CMYK"), "JPEG"),
            ACCEPTED,
            "",
        ),
        "happy/deep16.png": (encode(sixteen_bit, "PNG"), ACCEPTED, ""),
        "happy/anim.gif": (animated_gif(), ACCEPTED, ""),
        "happy/photo.webp": (encode(photo(seed=16), "WEBP"), ACCEPTED, ""),
        "happy/rotated.jpg": (rotated_jpeg(), ACCEPTED, ""),
        "happy/both.png": (both, REJECTED, "label_conflict"),
        "happy/bomb.png": (bomb_png(), REJECTED, "too_large"),
        "happy/truncated.jpg": (truncated, REJECTED, "corrupt"),
        "happy/empty.jpg": (b"", REJECTED, "empty"),
        "happy/notes.jpg": (b"remember to download the sad ones\n", REJECTED, "not_an_image"),
        "happy/.DS_Store": (b"\x00\x00\x00\x01Bud1" + bytes(200), REJECTED, "not_an_image"),
        "happy/drawing.svg": (
            b'<svg xmlns="http://www.w3.org/2000/svg"/>',
            REJECTED,
            "unsupported_format",
        ),
        "happy/tiny.png": (encode(photo(16, 16, seed=18), "PNG"), REJECTED, "too_small"),
        "happy/banner.jpg": (encode(photo(400, 60, seed=19), "JPEG"), REJECTED, "extreme_aspect"),
        "happy/photo.jpg.gz": (gzip.compress(smile), REJECTED, "not_an_image"),
        "sad/frown.jpg": (encode(photo(seed=20), "JPEG"), ACCEPTED, ""),
        "sad/frown.bmp": (encode(photo(seed=21), "BMP"), ACCEPTED, ""),
        "sad/frown.tiff": (encode(photo(seed=22), "TIFF"), REJECTED, "unsupported_format"),
        "sad/scan.ppm": (ppm(seed=24), REJECTED, "unsupported_format"),
        "sad/both.png": (both, REJECTED, "label_conflict"),
        "sad/both (copy).png": (both, REJECTED, "label_conflict"),
        "sad/truncated_a.jpg": (truncated, REJECTED, "corrupt"),
        "sad/truncated_b.jpg": (truncated, REJECTED, "corrupt"),
        "sad/truncated.png": (encode(photo(seed=23), "PNG")[:400], REJECTED, "corrupt"),
        "sad/404.png": (b"<!DOCTYPE html><html>Not Found</html>", REJECTED, "not_an_image"),
    }


def write_files(root: str, files: dict) -> None:
    """Writes {relative path: content, or (content, ...)} under root."""
    for relative, value in files.items():
        content = value[0] if isinstance(value, tuple) else value
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as stream:
            stream.write(content)


def face_files(per_label: int = 4, seed: int = 0, start: int = 0) -> dict[str, bytes]:
    """{relative path: content}: `per_label` distinct photos for each label, JPEG and PNG."""
    files = {}
    for label_index, label in enumerate(("sad", "happy")):
        for index in range(start, start + per_label):
            picture = photo(seed=seed * 100_000 + label_index * 10_000 + index)
            extension, image_format = (("jpg", "JPEG"), ("png", "PNG"))[index % 2]
            files[f"{label}/{label}_{index:03d}.{extension}"] = encode(picture, image_format)
    return files


def write_faces(root: str, per_label: int = 4, seed: int = 0) -> dict[str, bytes]:
    """Writes face_files(per_label, seed) under root; returns them."""
    files = face_files(per_label, seed)
    write_files(root, files)
    return files


def write_dataset_faces(root: str, per_label: int = 4, seed: int = 0) -> dict[str, bytes]:
    """At least `per_label` photos per label, and more until every split gets one.

    Splits go by content hash (pipeline.data.splits), so a handful of photos may leave the
    validation or test split empty, which a dataset build refuses.
    """
    from pipeline.data import splits

    files = face_files(per_label, seed)
    while {splits.assign_split(hashlib.sha256(data).hexdigest()) for data in files.values()} != set(
        splits.SPLITS
    ):
        files.update(face_files(1, seed, start=len(files) // 2))
    write_files(root, files)
    return files
