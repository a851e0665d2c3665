"""pipeline.transform against references of the same semantics built with Pillow and NumPy.

The corpus is made here from one small generated colour picture (asymmetric, so that a wrong
orientation shows): every format and mode of the accepted set, orientation in every container
that carries it, the refused formats, damaged files and decompression-bomb headers.
"""

import functools
import io
import os
import pickle
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps, PngImagePlugin

from pipeline import config
from pipeline.data import transform

# Tiny pictures are allowed here; the default budgets are tested on their own.
SMALL = config.TransformConfig(min_side=1, max_aspect_ratio=100.0)
ORIENTATION_TAG = 0x0112


def picture(width: int = 48, height: int = 36) -> np.ndarray:
    """uint8 (height, width, 3): smooth colours and a dark mark near the top-left corner."""
    rows, columns = np.mgrid[0:height, 0:width]
    red = 40 + 200 * columns / max(width - 1, 1)
    green = 30 + 180 * rows / max(height - 1, 1)
    blue = 128 + 100 * np.sin(columns / 5.0) * np.cos(rows / 7.0)
    image = np.stack([red, green, blue], axis=-1)
    image[2 : height // 3, 3 : width // 4] = (20, 20, 90)
    return np.clip(image, 0, 255).astype(np.uint8)


def alpha_ramp(width: int = 48, height: int = 36) -> np.ndarray:
    """uint8 (height, width): from transparent at the left to opaque at the right."""
    return np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def rgb_image() -> Image.Image:
    return Image.fromarray(picture())


def rgba_image() -> Image.Image:
    return Image.fromarray(np.dstack([picture(), alpha_ramp()]), "RGBA")


def palette_image() -> Image.Image:
    return rgb_image().quantize(colors=64)


def exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[ORIENTATION_TAG] = orientation
    return tags.tobytes()


def xmp(orientation: int, element: bool = False) -> bytes:
    value = (
        f"<tiff:Orientation>{orientation}</tiff:Orientation>"
        if element
        else f'tiff:Orientation="{orientation}"'
    )
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        '22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        f"{value if not element else ''}>{value if element else ''}</rdf:Description>"
        "</rdf:RDF></x:xmpmeta>"
    ).encode()


# Formats Pillow cannot write, written here from their specifications.


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_bytes(samples: np.ndarray, colour_type: int, depth: int) -> bytes:
    """A PNG of (height, width[, channels]) samples, 8 or 16 bits, without filtering."""
    height, width = samples.shape[:2]
    rows = samples.astype(">u2" if depth == 16 else np.uint8).reshape(height, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def bmp_bytes(
    rows: np.ndarray,
    width: int,
    bits: int,
    palette: np.ndarray | None = None,
    header_size: int = 40,
    compression: int = 0,
    masks: tuple[int, ...] = (),
) -> bytes:
    """A bottom-up BMP of packed pixel rows (height, row bytes), top row first."""
    height = rows.shape[0]
    stride = (width * bits + 31) // 32 * 4
    padded = np.zeros((height, stride), np.uint8)
    padded[:, : rows.shape[1]] = rows
    table = b""
    if palette is not None:
        table = np.concatenate([palette[:, ::-1], np.zeros((len(palette), 1), np.uint8)], 1)
        table = table.astype(np.uint8).tobytes()
    colours = 0 if palette is None else len(palette)
    header = struct.pack(
        "<IiiHHIIiiII",
        header_size,
        width,
        height,
        1,
        bits,
        compression,
        stride * height,
        0,
        0,
        colours,
        0,
    )
    header += struct.pack(f"<{len(masks)}I", *masks)
    header += bytes(header_size - len(header))
    offset = 14 + header_size + len(table)
    pixels = padded[::-1].tobytes()
    return (
        b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + table + pixels
    )


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """(height, width) palette indices packed MSB first, bits per pixel 1, 4 or 8."""
    per_byte = 8 // bits
    height, width = indices.shape
    padded = np.zeros((height, -(-width // per_byte) * per_byte), np.uint8)
    padded[:, :width] = indices
    groups = padded.reshape(height, -1, per_byte).astype(np.uint16)
    shifts = 8 - bits * np.arange(1, per_byte + 1)
    return (groups << shifts).sum(axis=2).astype(np.uint8)


def gif_blocks(data: bytes) -> int:
    """The position of a GIF's first image descriptor (after the colour table and extensions)."""
    position = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[position] == 0x21:
        position += 2
        while data[position]:
            position += data[position] + 1
        position += 1
    return position


def gif_with_offset_frame(transparency: int | None) -> bytes:
    """A GIF whose first frame (40 x 30) sits at (4, 3) on a 48 x 36 logical screen."""
    options = {"transparency": transparency} if transparency is not None else {}
    frame = Image.fromarray(picture(40, 30)).quantize(colors=32)
    data = bytearray(encode(frame, "GIF", **options))
    data[6:10] = struct.pack("<HH", 48, 36)
    descriptor = gif_blocks(bytes(data))
    data[descriptor + 1 : descriptor + 5] = struct.pack("<HH", 4, 3)
    return bytes(data)


# References: what Pillow decodes, turned upright, composited on white (the module's rule).


def composite(rgba: np.ndarray) -> np.ndarray:
    colour, alpha = rgba[..., :3].astype(np.float64), rgba[..., 3:].astype(np.float64)
    return (255 - np.rint((255 - colour) * alpha / 255)).astype(np.uint8)


def reference(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        upright = ImageOps.exif_transpose(image)
        transparent = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
        if transparent:
            return composite(np.asarray(upright.convert("RGBA")))
        return np.asarray(upright.convert("RGB"))


def area_weights(source: int, target: int) -> np.ndarray:
    """(target, source): each output pixel's share of each input pixel, box filter."""
    scale = source / target
    starts, ends = np.arange(target) * scale, (np.arange(target) + 1) * scale
    left, right = np.arange(source), np.arange(source) + 1
    overlap = np.minimum(ends[:, None], right[None, :]) - np.maximum(starts[:, None], left[None, :])
    return np.clip(overlap, 0, None) / scale


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    rows, columns = area_weights(image.shape[0], height), area_weights(image.shape[1], width)
    image = image.astype(np.float64)
    resized = np.stack([rows @ image[..., channel] @ columns.T for channel in range(3)], axis=-1)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def policy_reference(image: np.ndarray, size: int, policy: str) -> np.ndarray:
    height, width = image.shape[:2]
    if policy == "stretch":
        return area_resize(image, size, size)
    if policy == "crop":
        short = min(height, width)
        top, left = (height - short) // 2, (width - short) // 2
        return area_resize(image[top : top + short, left : left + short], size, size)
    long = max(height, width)
    new_height = max(1, (2 * height * size + long) // (2 * long))
    new_width = max(1, (2 * width * size + long) // (2 * long))
    canvas = np.zeros((size, size, 3), np.uint8)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    canvas[top : top + new_height, left : left + new_width] = area_resize(
        image, new_height, new_width
    )
    return canvas


# The functions under test, traced once per options.

SIGNATURE = [tf.TensorSpec([], tf.string)]


@functools.cache
def decoder(options: config.TransformConfig):
    return tf.function(lambda data: transform.decode(data, options), input_signature=SIGNATURE)


@functools.cache
def transformer(options: config.TransformConfig):
    return tf.function(lambda data: transform.transform(data, options), input_signature=SIGNATURE)


def decoded(data: bytes, options: config.TransformConfig = SMALL) -> np.ndarray:
    return decoder(options)(data).numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: int = 0) -> None:
    assert actual.shape == expected.shape
    difference = np.abs(actual.astype(int) - expected.astype(int)).max()
    assert difference <= tolerance, f"pixels differ by up to {difference} levels"


# Every format and mode of the accepted set, against Pillow. Tolerance in intensity levels:
# 0 where both sides run the same decoder (libjpeg ISLOW, libpng, giflib, lossless WebP).
ACCEPTED = {
    "jpeg baseline": (lambda: encode(rgb_image(), "JPEG", quality=90), 0),
    "jpeg progressive": (lambda: encode(rgb_image(), "JPEG", quality=90, progressive=True), 0),
    "jpeg 4:4:4": (lambda: encode(rgb_image(), "JPEG", quality=95, subsampling=0), 0),
    "jpeg grayscale": (lambda: encode(rgb_image().convert("L"), "JPEG"), 0),
    "jpeg cmyk": (lambda: encode(rgb_image().convert("CMYK"), "JPEG", quality=95), 0),
    "jpeg large icc profile": (
        lambda: encode(rgb_image(), "JPEG", icc_profile=bytes(range(256)) * 600, exif=exif(6)),
        0,
    ),
    "png rgb": (lambda: encode(rgb_image(), "PNG"), 0),
    "png rgba": (lambda: encode(rgba_image(), "PNG"), 0),
    "png palette": (lambda: encode(palette_image(), "PNG"), 0),
    "png palette 4-bit": (lambda: encode(rgb_image().quantize(colors=16), "PNG", bits=4), 0),
    "png palette trns": (lambda: encode(palette_image(), "PNG", transparency=5), 0),
    "png 1-bit": (lambda: encode(rgb_image().convert("1"), "PNG"), 0),
    "png grayscale": (lambda: encode(rgb_image().convert("L"), "PNG"), 0),
    "png grayscale trns": (lambda: encode(rgb_image().convert("L"), "PNG", transparency=100), 0),
    "png gray+alpha": (lambda: encode(rgba_image().convert("LA"), "PNG"), 0),
    "gif": (lambda: encode(palette_image(), "GIF", interlace=0), 0),
    "gif interlaced": (lambda: encode(palette_image(), "GIF", interlace=1), 0),
    "gif transparent": (lambda: encode(palette_image(), "GIF", transparency=5), 0),
    "gif animated": (
        lambda: encode(
            palette_image(),
            "GIF",
            save_all=True,
            append_images=[Image.fromarray(picture()[::-1].copy()).quantize(colors=64)],
            duration=100,
        ),
        0,
    ),
    "gif offset frame": (lambda: gif_with_offset_frame(None), 0),
    "gif offset frame transparent": (lambda: gif_with_offset_frame(3), 0),
    "bmp 24-bit": (lambda: encode(rgb_image(), "BMP"), 0),
    "bmp 32-bit": (lambda: encode(rgba_image(), "BMP"), 0),
    "bmp 8-bit palette": (lambda: encode(palette_image(), "BMP"), 0),
    "bmp 8-bit grayscale": (lambda: encode(rgb_image().convert("L"), "BMP"), 0),
    "bmp 1-bit": (lambda: encode(rgb_image().convert("1"), "BMP"), 0),
    "bmp 4-bit palette": (
        lambda: bmp_bytes(
            pack_indices(np.asarray(rgb_image().quantize(colors=16)), 4),
            48,
            4,
            np.asarray(rgb_image().quantize(colors=16).getpalette()[:48], np.uint8).reshape(16, 3),
        ),
        0,
    ),
    "bmp 32-bit alpha bitfields": (
        lambda: bmp_bytes(
            np.dstack([picture()[..., ::-1], alpha_ramp()]).reshape(36, -1),
            48,
            32,
            header_size=124,
            compression=3,
            masks=(0xFF0000, 0xFF00, 0xFF, 0xFF000000),
        ),
        0,
    ),
    "webp lossless": (lambda: encode(rgb_image(), "WEBP", lossless=True), 0),
    "webp lossless alpha": (lambda: encode(rgba_image(), "WEBP", lossless=True), 0),
    "webp lossy": (lambda: encode(rgb_image(), "WEBP", quality=90), 2),
    "webp lossy alpha": (lambda: encode(rgba_image(), "WEBP", quality=90), 2),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_accepted_formats_decode_as_pillow_shows_them(name):
    make, tolerance = ACCEPTED[name]
    data = make()
    assert_close(decoded(data), reference(data), tolerance)
    facts = transform.Transformer(SMALL)(data)
    assert facts.reason == ""
    displayed = reference(data).shape[1::-1]  # (width, height) as displayed
    assert (facts.format, facts.width, facts.height) == (name.split()[0], *displayed)
    assert facts.pixels.shape == (SMALL.image_size, SMALL.image_size, 3)


def test_transparent_regions_become_white():
    opaque = alpha_ramp() > 127
    rgba = Image.fromarray(np.dstack([picture(), np.where(opaque, 255, 0).astype(np.uint8)]))
    indices = np.asarray(palette_image())
    for data, transparent in (
        (encode(rgba, "PNG"), ~opaque),
        (encode(rgba, "WEBP", lossless=True), ~opaque),
        (encode(palette_image(), "GIF", transparency=int(indices[0, 0])), indices == indices[0, 0]),
    ):
        image = decoded(data)
        assert transparent.any() and (image[transparent] == 255).all()
        assert (image[~transparent] < 255).any()


@pytest.mark.parametrize("colour_type, channels", [(0, 1), (2, 3), (4, 2), (6, 4)])
def test_16_bit_samples_round_to_the_nearest_8_bit_value(colour_type, channels):
    rng = np.random.default_rng(colour_type)
    samples = rng.integers(0, 65536, (20, 30, channels), dtype=np.uint16)
    samples[0, :2], samples[1, :2] = 0, 65535  # the extremes map to 0 and 255
    data = png_bytes(samples, colour_type, 16)
    eight = np.floor(samples.astype(np.float64) / 257 + 0.5).astype(np.uint8)
    colour = eight[..., : 3 if channels >= 3 else 1]
    if channels in (2, 4):
        expected = composite(np.dstack([np.broadcast_to(colour, (20, 30, 3)), eight[..., -1:]]))
    else:
        expected = np.broadcast_to(colour, (20, 30, 3))
    assert_close(decoded(data), np.ascontiguousarray(expected))


def test_16_bit_grayscale_matches_pillow_samples_scaled():
    samples = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 54).astype(np.uint16)
    data = encode(Image.fromarray(samples), "PNG")
    values = np.asarray(Image.open(io.BytesIO(data))).astype(np.float64)  # Pillow's I;16
    expected = np.repeat(np.floor(values / 257 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    assert_close(decoded(data), expected)


# Orientation: every container that carries it, as Pillow's exif_transpose turns it.


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_matches_exif_transpose(orientation):
    data = encode(rgb_image(), "JPEG", quality=95, exif=exif(orientation))
    assert_close(decoded(data), reference(data))
    facts = transform.Transformer(SMALL)(data)
    turned = orientation >= 5
    assert (facts.width, facts.height) == ((36, 48) if turned else (48, 36))
    assert facts.orientation == orientation


def png_with_xmp(orientation: int) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp(orientation).decode())
    return encode(rgb_image(), "PNG", pnginfo=info)


CONTAINERS = {
    "jpeg xmp attribute": lambda: encode(rgb_image(), "JPEG", xmp=xmp(6)),
    "jpeg xmp element": lambda: encode(rgb_image(), "JPEG", xmp=xmp(8, element=True)),
    "png exif": lambda: encode(rgb_image(), "PNG", exif=exif(6)),
    "png xmp": lambda: png_with_xmp(5),
    "webp exif": lambda: encode(rgb_image(), "WEBP", lossless=True, exif=exif(3)),
    "webp xmp": lambda: encode(rgb_image(), "WEBP", lossless=True, xmp=xmp(7)),
}


@pytest.mark.parametrize("name", list(CONTAINERS))
def test_orientation_from_every_container(name):
    data = CONTAINERS[name]()
    with Image.open(io.BytesIO(data)) as image:
        orientation = image.getexif().get(ORIENTATION_TAG)  # what Pillow reads, EXIF or XMP
    assert orientation in range(2, 9)
    assert_close(decoded(data), reference(data))
    assert transform.Transformer(SMALL)(data).orientation == orientation


def test_jpeg_headers_beyond_the_quick_pass():
    # 40 segments before the frame: more than the 64 KiB, 31-segment pass follows.
    data = jpeg_with_comments(40)
    assert_close(decoded(data), reference(data))
    assert transform.Transformer(SMALL)(data).orientation == 8
    assert transform.Transformer(SMALL)(jpeg_with_comments(600)).reason == transform.CORRUPT


def test_exif_orientation_wins_over_xmp_as_in_pillow():
    data = encode(rgb_image(), "JPEG", quality=95, exif=exif(1), xmp=xmp(6))
    assert_close(decoded(data), reference(data))
    assert decoded(data).shape == (36, 48, 3)


# Resize policies, tiny and multi-megapixel images.


@pytest.mark.parametrize("policy", transform.RESIZE_POLICIES)
@pytest.mark.parametrize("size", [(60, 40), (40, 60), (25, 30)])
def test_resize_policies_match_an_area_reference(policy, size):
    width, height = size
    image = picture(width, height)
    options = config.TransformConfig(image_size=32, resize_policy=policy, min_side=1)
    actual = transformer(options)(encode(Image.fromarray(image), "PNG")).numpy()
    assert_close(actual, policy_reference(image, 32, policy), tolerance=1)


@pytest.mark.parametrize("policy", transform.RESIZE_POLICIES)
@pytest.mark.parametrize("shape", [(47, 32), (32, 47)])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_policies_apply_to_the_upright_image(policy, shape, orientation):
    # 47 x 32 pixels to 32: the crop resizes nothing, so an offset one pixel off shows, and the
    # odd margin 15 puts a flipped crop offset (8) on the other side of the middle (7).
    # Landscape and portrait, so that both the row and the column offsets are flipped.
    data = encode(Image.fromarray(picture(*shape)), "PNG", exif=exif(orientation))
    options = config.TransformConfig(image_size=32, resize_policy=policy, min_side=1)
    expected = policy_reference(reference(data), 32, policy)
    tolerance = 0 if policy == "crop" else 1
    assert_close(transformer(options)(data).numpy(), expected, tolerance)


def test_pad_is_black_and_centred():
    options = config.TransformConfig(image_size=32, resize_policy="pad", min_side=1)
    actual = transformer(options)(encode(Image.fromarray(picture(64, 32)), "PNG")).numpy()
    assert (actual[:8] == 0).all() and (actual[-8:] == 0).all()
    assert (actual[8:24].max(axis=2) > 0).all()


def test_a_tiny_image_fills_the_output():
    data = encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG")
    pixels = transform.Transformer(SMALL)(data).pixels
    assert (pixels == (10, 200, 30)).all()
    assert transform.Transformer()(data).reason == transform.TOO_SMALL


def test_a_multi_megapixel_photo():
    image = np.asarray(Image.fromarray(picture(300, 200)).resize((3000, 2000), Image.BILINEAR))
    data = encode(Image.fromarray(image), "JPEG", quality=85, exif=exif(6))
    result = transform.Transformer()(data)
    assert (result.width, result.height) == (2000, 3000)
    assert_close(result.pixels, area_resize(reference(data), 256, 256), tolerance=1)


def test_crop_box_seam_crops_before_the_resize_policy():
    data = encode(rgb_image(), "PNG")
    options = config.TransformConfig(image_size=16, min_side=1)
    box = tf.constant([2, 3, 20, 24], tf.int32)
    actual = transform.transform(data, options, crop_fn=lambda image: box).numpy()
    assert_close(actual, area_resize(picture()[2:22, 3:27], 16, 16), tolerance=1)


# Rejections: the status form's reason, the raising form's message.


def jpeg_with_comments(count: int) -> bytes:
    """A JPEG with `count` comment segments after SOI (more than the quick header pass follows)."""
    data = encode(rgb_image(), "JPEG", quality=95, exif=exif(8))
    comment = b"\xff\xfe" + struct.pack(">H", 7) + b"hello"
    return data[:2] + comment * count + data[2:]


def truncated(data: bytes, fraction: float = 0.6) -> bytes:
    return data[: int(len(data) * fraction)]


def flipped(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(data) * 2 // 3] ^= 0x55
    return bytes(damaged)


def jpeg_with_frame(marker: int = 0xC0, precision: int = 8) -> bytes:
    data = bytearray(encode(rgb_image(), "JPEG"))
    frame = data.index(b"\xff\xc0")
    data[frame + 1], data[frame + 4] = marker, precision
    return bytes(data)


def html() -> bytes:
    return b"<!DOCTYPE html><html><body>not a face</body></html>"


REJECTED = {
    "empty": (lambda: b"", transform.EMPTY),
    "text": (lambda: b"hello, world\n" * 10, transform.NOT_AN_IMAGE),
    "html": (html, transform.NOT_AN_IMAGE),
    "ppm": (lambda: encode(rgb_image(), "PPM"), transform.UNSUPPORTED_FORMAT),
    "pgm": (lambda: encode(rgb_image().convert("L"), "PPM"), transform.UNSUPPORTED_FORMAT),
    "tiff": (lambda: encode(rgb_image(), "TIFF"), transform.UNSUPPORTED_FORMAT),
    "ico": (lambda: encode(rgb_image(), "ICO"), transform.UNSUPPORTED_FORMAT),
    "svg": (
        lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
        transform.UNSUPPORTED_FORMAT,
    ),
    "svg with a byte-order mark": (
        lambda: b"\xef\xbb\xbf  \n<svg width='10' height='10'></svg>",
        transform.UNSUPPORTED_FORMAT,
    ),
    "heic": (
        lambda: b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64),
        transform.UNSUPPORTED_FORMAT,
    ),
    "jpeg xl": (lambda: b"\xff\x0a" + bytes(64), transform.UNSUPPORTED_FORMAT),
    "animated webp": (
        lambda: encode(
            rgb_image(), "WEBP", save_all=True, append_images=[rgba_image()], lossless=True
        ),
        transform.UNSUPPORTED_FORMAT,
    ),
    "arithmetic jpeg": (lambda: jpeg_with_frame(marker=0xC9), transform.UNSUPPORTED_FORMAT),
    "12-bit jpeg": (lambda: jpeg_with_frame(precision=12), transform.UNSUPPORTED_FORMAT),
    "16-bit bmp": (
        lambda: bmp_bytes(np.zeros((36, 96), np.uint8), 48, 16),
        transform.UNSUPPORTED_FORMAT,
    ),
    "rle bmp": (
        lambda: bmp_bytes(
            np.zeros((36, 48), np.uint8), 48, 8, np.zeros((256, 3), np.uint8), compression=1
        ),
        transform.UNSUPPORTED_FORMAT,
    ),
    "truncated jpeg": (lambda: truncated(encode(rgb_image(), "JPEG")), transform.CORRUPT),
    "truncated progressive jpeg": (
        lambda: truncated(encode(rgb_image(), "JPEG", progressive=True)),
        transform.CORRUPT,
    ),
    "jpeg without its end": (lambda: encode(rgb_image(), "JPEG")[:-2], transform.CORRUPT),
    "truncated png": (lambda: truncated(encode(rgb_image(), "PNG")), transform.CORRUPT),
    "png without iend": (lambda: encode(rgb_image(), "PNG")[:-12], transform.CORRUPT),
    "damaged png": (lambda: flipped(encode(rgb_image(), "PNG")), transform.CORRUPT),
    "truncated gif": (lambda: truncated(encode(palette_image(), "GIF")), transform.CORRUPT),
    "truncated webp": (lambda: truncated(encode(rgb_image(), "WEBP")), transform.CORRUPT),
    "truncated lossless webp": (
        lambda: truncated(encode(rgb_image(), "WEBP", lossless=True)),
        transform.CORRUPT,
    ),
    "truncated bmp": (lambda: truncated(encode(rgb_image(), "BMP")), transform.CORRUPT),
    "too small": (lambda: encode(Image.fromarray(picture(20, 24)), "PNG"), transform.TOO_SMALL),
    "extreme aspect": (
        lambda: encode(Image.fromarray(picture(200, 40)), "PNG"),
        transform.EXTREME_ASPECT,
    ),
}


@pytest.mark.parametrize("name", list(REJECTED))
def test_rejected_files_get_their_reason_and_a_clear_error(name):
    make, reason = REJECTED[name]
    data = make()
    result = transform.Transformer()(data)
    assert (result.reason, result.pixels) == (reason, None)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        transformer(transform.DEFAULT_OPTIONS)(data)
    from_header = transform.inspect(data)["reason"].numpy().decode() == reason
    # Refused from the header: our one-line message; else the decoder's own, also the detail.
    expected = f"{reason}: {transform.REASONS[reason]}" if from_header else result.detail
    assert expected in str(raised.value)


def test_header_facts_of_a_refused_file():
    result = transform.Transformer()(encode(rgb_image(), "TIFF"))
    assert (result.format, result.detail) == ("tiff", "a TIFF image")
    result = transform.Transformer()(REJECTED["animated webp"][0]())
    assert (result.format, result.width, result.height) == ("webp", 48, 36)


# Decompression bombs: headers declaring far more pixels than the budget, with no data behind
# them. A decode would fail (corrupt); `too_large` shows the header alone decided.


def webp_bomb() -> bytes:
    bits = 16382 | (16382 << 14)
    stream = b"\x2f" + struct.pack("<I", bits) + bytes(3)
    chunk = b"VP8L" + struct.pack("<I", len(stream)) + stream
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def png_bomb() -> bytes:
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def gif_bomb() -> bytes:
    screen = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0) + bytes(6)
    image = b"," + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b";"


def bmp_bomb() -> bytes:
    header = struct.pack("<IiiHHIIiiII", 40, 100_000, 100_000, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + header


def jpeg_bomb() -> bytes:
    frame = (
        b"\xff\xc0"
        + struct.pack(">HBHHB", 17, 8, 65535, 65535, 3)
        + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    )
    scan = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + frame + scan + b"\xff\xd9"


@pytest.mark.parametrize("make", [webp_bomb, png_bomb, gif_bomb, bmp_bomb, jpeg_bomb])
def test_bomb_headers_are_refused_before_decoding(make):
    data = make()
    result = transform.Transformer()(data)
    assert result.reason == transform.TOO_LARGE
    assert result.width * result.height > transform.DEFAULT_OPTIONS.max_pixels
    with pytest.raises(tf.errors.InvalidArgumentError, match="too_large: "):
        transformer(transform.DEFAULT_OPTIONS)(data)


# One function everywhere: batched, exported, reloaded, pickled.


def test_batch_equals_the_images_one_by_one():
    files = [
        encode(rgb_image(), "JPEG"),
        encode(rgba_image(), "PNG"),
        ACCEPTED["gif transparent"][0](),
    ]
    batch = transform.transform_batch(tf.constant(files), SMALL).numpy()
    for data, pixels in zip(files, batch, strict=True):
        np.testing.assert_array_equal(pixels, transform.Transformer(SMALL)(data).pixels)


def test_batch_pixel_budget_is_checked_from_the_headers():
    files = tf.constant([encode(rgb_image(), "PNG")] * 3)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="too_large: the images of the request"
    ):
        transform.transform_batch(files, SMALL, max_batch_pixels=2 * 48 * 36)


class _Served(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(self, image_bytes):
        return {"pixels": transform.transform_batch(image_bytes, transform.DEFAULT_OPTIONS)}


def test_an_exported_savedmodel_gives_the_eager_pixels(tmp_path):
    module = _Served()
    path = str(tmp_path / "model")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    with open(os.path.join(path, "saved_model.pb"), "rb") as graph:
        assert b"PyFunc" not in graph.read()
    served = tf.saved_model.load(path).signatures["serving_default"]
    files = [
        encode(rgb_image().resize((96, 72)), "JPEG", exif=exif(6)),
        encode(
            Image.fromarray(np.dstack([picture(96, 72), alpha_ramp(96, 72)]), "RGBA"),
            "WEBP",
            lossless=True,
        ),
        encode(Image.fromarray(picture(96, 72)).quantize(colors=64), "GIF", transparency=2),
        encode(Image.fromarray(picture(96, 72)).quantize(colors=64), "BMP"),
    ]
    pixels = served(image_bytes=tf.constant(files))["pixels"].numpy()
    for data, served_pixels in zip(files, pixels, strict=True):
        np.testing.assert_array_equal(served_pixels, transform.transform(data).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="unsupported_format: "):
        served(image_bytes=tf.constant([encode(rgb_image(), "TIFF")]))


@pytest.mark.parametrize("with_decoder_failure", [False, True])
def test_transformer_many_equals_one_by_one(with_decoder_failure):
    files = [encode(rgb_image(), "JPEG"), encode(rgb_image(), "TIFF"), encode(rgba_image(), "PNG")]
    if with_decoder_failure:  # the decoder, not the header, refuses it: the batch falls back
        files.append(REJECTED["truncated jpeg"][0]())
    transformer_ = transform.Transformer(SMALL)
    for batched, single in zip(transformer_.many(files), map(transformer_, files), strict=True):
        assert batched._replace(pixels=None) == single._replace(pixels=None)
        assert (batched.pixels is None) == (single.pixels is None)
        if single.pixels is not None:
            np.testing.assert_array_equal(batched.pixels, single.pixels)


def test_transformer_pickles_for_beam_workers():
    copy = pickle.loads(pickle.dumps(transform.Transformer(SMALL)))
    data = encode(rgb_image(), "PNG")
    np.testing.assert_array_equal(copy(data).pixels, transform.Transformer(SMALL)(data).pixels)


def test_options_are_validated():
    with pytest.raises(ValueError, match="resize policy"):
        config.TransformConfig(resize_policy="zoom")
    with pytest.raises(ValueError, match="aspect"):
        config.TransformConfig(max_aspect_ratio=0.5)


def test_face_crop_cuts_the_largest_face_before_the_resize_and_keeps_faceless_images():
    from tests.support import drawn_faces

    options = config.TransformConfig(face_crop=True, face_margin=0.1)
    face = drawn_faces.drawn_face(110, canvas=(256, 512))  # a face right of centre, 2:1 canvas
    data = encode(Image.fromarray(face), "PNG")
    cropped = transform.transform(data, options).numpy()
    whole = transform.transform(data, config.TransformConfig()).numpy()
    skin = np.array([205, 170, 140])

    def skin_share(image):
        return np.all(np.abs(image.astype(int) - skin) < 16, axis=-1).mean()

    assert skin_share(cropped) > 0.4 > skin_share(whole)  # the face fills the crop
    rows, columns = np.nonzero(np.all(np.abs(cropped.astype(int) - skin) < 16, axis=-1))
    assert abs(rows.mean() - 128) < 30 and abs(columns.mean() - 128) < 30  # centred on it
    blank = encode(Image.new("RGB", (300, 200), (90, 90, 90)), "PNG")  # no face: kept whole
    np.testing.assert_array_equal(
        transform.transform(blank, options).numpy(),
        transform.transform(blank, config.TransformConfig()).numpy(),
    )
