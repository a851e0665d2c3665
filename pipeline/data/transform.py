"""The pixel transform, written once in TensorFlow ops: encoded image bytes -> uint8 [S, S, 3].

Every place that turns a file into pixels calls this module: the Beam data job's workers (a
training example is what `Transformer` returned for the file's bytes), the exported
`serving_default` graph (`transform_batch`), cross-validation, the demo and the report. There
is no second implementation to drift from.

The steps, in order:
  1. sniff: the content's magic bytes decide the format, never a file name;
  2. header: width, height, orientation and layout are read in graph from the bytes alone, and
     the budgets (pixels, shorter side, aspect ratio) are checked before a single pixel is
     decoded, so a decompression bomb costs microseconds and no memory;
  3. decode the accepted set: JPEG (baseline, extended, progressive; grayscale, RGB, CMYK/YCCK),
     PNG (every colour type and bit depth, tRNS), GIF (the first frame), BMP (uncompressed 1, 4,
     8, 24 and 32 bits) and still WebP (lossy, lossless, alpha);
  4. transparency composited on white, 16-bit samples scaled to 8 bits, grayscale replicated;
  5. an optional crop box (the seam for an in-graph face detector), then the resize policy;
  6. orientation (EXIF, else XMP `tiff:Orientation`, as Pillow's ImageOps.exif_transpose and
     with its geometry: width and height are as displayed, the policy's crop and pad are laid
     out on the upright picture). Without a crop box it turns the S x S result, the crop offsets
     mapped back to the stored pixels: turning a 12-megapixel photo costs more than decoding
     it. With a crop box the full image is turned first, as a detector must see it upright.

Rules (each applied in exactly one place below):
  - 16 to 8 bits: v8 = round(v16 / 257) = (v16 + 128) // 257, the nearest 8-bit value (what
    libpng's png_set_scale_16 computes); colour and alpha alike, before compositing.
  - Compositing on white, 8-bit colour c and alpha a: out = 255 - round((255 - c) * a / 255),
    in integers; (255 - c) * a / 255 never lies halfway, so the rounding has no ties.
  - Resize: tf.image.resize(method="area") in float32, then round half to even (tf.round) to
    uint8. `stretch` resizes the whole image to S x S; `crop` cuts the centre square (offsets
    rounded down) first; `pad` keeps the aspect ratio, the long side becomes S and the short
    side round_half_up(short * S / long) (at least 1), centred (offsets rounded down) on
    BLACK, as tf.image.resize_with_pad and the seed's Python cleaning pad.
  - GIF: the first frame only, as Pillow shows it. TensorFlow's GIF decoder decodes every frame
    (a many-frame GIF is a memory bomb) and paints transparent pixels black, so the graph
    rebuilds a one-frame GIF from the bytes: the first image's data, its colour table with the
    transparent entry rewritten to white (exactly what compositing on white gives), no Graphics
    Control Extension, and a logical screen the size of the frame. The frame is then placed on
    Pillow's canvas (the logical screen, grown to hold the frame), whose uncovered area is white
    when the frame has a transparent colour and the colour table's entry 0 otherwise.
  - BMP: decoded in graph from the raw rows (TensorFlow's decode_bmp returns palette indices as
    pixels and requires an exact file size); 32-bit BI_RGB ignores the fourth byte and
    BI_BITFIELDS follows Pillow's supported masks, alpha included.

Refused as `unsupported_format`, with the reason in the detail: TIFF, PPM/PGM/PBM/PAM, ICO/CUR,
PSD, PDF, QOI, OpenEXR, HEIC/AVIF, SVG, JPEG 2000, JPEG XL (tf.io.decode_jxl exists, but Pillow
and the usual tools do not decode it, so no training file could be checked against an
independent reference), animated WebP (TensorFlow's decoder decodes every frame and, asked for
an unknown channel count, writes past its buffer), 12-bit, lossless, hierarchical and
arithmetic-coded JPEG, 16-bit and RLE-compressed BMP. Damaged files are `corrupt`: from the
header walk where it can tell (a PNG without IEND, a GIF whose first frame is cut), else from
TensorFlow's decoders, which refuse truncated JPEG, PNG, GIF and WebP data (checked at every cut
position) rather than fill it with grey.

Header facts are read in graph with few executed ops (TensorFlow's per-op cost, not the bytes,
dominates small files): a JPEG's segment chain is followed by pointer doubling over its 0xFF
marker candidates (the first 64 KiB, the whole file only when the chain leaves them); PNG, GIF
and WebP are walked chunk by chunk with one packed state vector.

Entry points: `inspect` (header facts, never raises), `decode` (the upright image before the
resize), `transform` (raises tf.errors.InvalidArgumentError with one bounded message for a
rejected file, so TF Serving answers 400), `transform_batch` (strings [N] -> uint8
[N, S, S, 3], for the serving signature), and `Transformer`, the Python call for the Beam
workers (graphs traced once per options; a status, never an exception, for bad content).
"""

import functools
import re
import typing
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import contract
from pipeline.data.reasons import (  # noqa: F401 (re-exported: the transform's vocabulary)
    ACCEPTED_FORMATS,
    CORRUPT,
    EMPTY,
    EXTREME_ASPECT,
    NOT_AN_IMAGE,
    REASONS,
    TOO_LARGE,
    TOO_SMALL,
    UNSUPPORTED_FORMAT,
)

IMAGE_SIZE = contract.IMAGE_SIZE
RESIZE_POLICIES = typing.get_args(config_lib.ResizePolicy)

# Formats recognised by their magic bytes: the accepted ones first (their index is the branch
# of the decoder), then those refused. (format, offset, magic), first match wins.
_REFUSED_FORMATS = {  # name -> what the message calls it
    "tiff": "a TIFF image",
    "ppm": "a PPM, PGM, PBM or PAM image",
    "ico": "an ICO or CUR icon",
    "psd": "a Photoshop document",
    "pdf": "a PDF document",
    "qoi": "a QOI image",
    "openexr": "an OpenEXR image",
    "heic": "a HEIC/HEIF image",
    "avif": "an AVIF image",
    "jpeg2000": "a JPEG 2000 image",
    "jpegxl": "a JPEG XL image",
    "svg": "an SVG drawing",
}
_FORMAT_NAMES = ACCEPTED_FORMATS + tuple(_REFUSED_FORMATS)
_BMP_HEADER_SIZES = (12, 40, 52, 56, 64, 108, 124)
_SIGNATURES = (
    ("jpeg", 0, b"\xff\xd8\xff"),
    ("png", 0, b"\x89PNG\r\n\x1a\n"),
    ("gif", 0, b"GIF87a"),
    ("gif", 0, b"GIF89a"),
    *(("bmp", 0, b"BM" + bytes(12) + bytes([size, 0, 0, 0])) for size in _BMP_HEADER_SIZES),
    ("webp", 0, b"RIFF\0\0\0\0WEBP"),
    ("tiff", 0, b"II*\0"),
    ("tiff", 0, b"MM\0*"),
    ("tiff", 0, b"II+\0"),
    ("tiff", 0, b"MM\0+"),
    *(("ppm", 0, b"P" + bytes([kind, space])) for kind in b"1234567" for space in b" \t\r\n"),
    ("ico", 0, b"\0\0\1\0"),
    ("ico", 0, b"\0\0\2\0"),
    ("psd", 0, b"8BPS"),
    ("pdf", 0, b"%PDF"),
    ("qoi", 0, b"qoif"),
    ("openexr", 0, b"\x76\x2f\x31\x01"),
    *(("heic", 4, b"ftyp" + brand) for brand in (b"heic", b"heix", b"hevc", b"heim", b"mif1")),
    *(("heic", 4, b"ftyp" + brand) for brand in (b"heis", b"msf1")),
    *(("avif", 4, b"ftyp" + brand) for brand in (b"avif", b"avis")),
    ("jpeg2000", 0, b"\0\0\0\x0cjP  \r\n\x87\n"),
    ("jpeg2000", 0, b"\xff\x4f\xff\x51"),
    ("jpegxl", 0, b"\xff\x0a"),
    ("jpegxl", 0, b"\0\0\0\x0cJXL \r\n\x87\n"),
)
# Bytes that are not part of a signature (BMP's file size and offset, RIFF's size) are masked.
_MASKED = {("bmp", index) for index in range(2, 14)} | {("webp", index) for index in range(4, 8)}
_SNIFF_BYTES = 18
_SVG_PROBE_BYTES = 2048
_SVG_STARTS = (b"<svg", b"<?xml", b"<!doctype svg")

# Bounds of the header walks (each step reads a few bytes).
_MAX_PNG_CHUNKS = 1 << 16  # chunks read for metadata; decoding is libpng's
_MAX_GIF_BLOCKS = 1 << 20  # blocks and sub-blocks up to the end of the first frame
_MAX_WEBP_CHUNKS = 64
_MAX_IFD_ENTRIES = 256
_ORIENTATION_TAG = 0x0112

_EXIF_HEADER = b"Exif\0\0"
_XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\0"
_XMP_PNG_KEYWORD = b"XML:com.adobe.xmp\0"
_XMP_ORIENTATION = b"tiff:Orientation"

# A stand-in for pixels never decoded (inspect, or a rejected file in the status form).
_NO_PIXELS_SIDE = 1


# The options: pipeline.config.TransformConfig (image_size and resize_policy change pixels,
# face_crop too; max_pixels, min_side and max_aspect_ratio decide from the header which files
# are refused). They are part of a dataset's metadata and of the model exported from it.
DEFAULT_OPTIONS = config_lib.TransformConfig()

# A crop box function: uint8 [H, W, 3] (as displayed) -> int32 [4] (top, left, height, width).
CropFunction = Callable[[tf.Tensor], tf.Tensor]


def _where(condition, yes, no) -> tf.Tensor:
    """tf.where with Python numbers taking the dtype of the tensor beside them, else int64."""
    tensors = [value.dtype for value in (yes, no) if isinstance(value, tf.Tensor)]
    number = isinstance(yes, int) and not isinstance(yes, bool)
    dtype = tensors[0] if tensors else (tf.int64 if number else None)
    return tf.where(condition, tf.convert_to_tensor(yes, dtype), tf.convert_to_tensor(no, dtype))


# Reading bytes in graph. Positions are int64; reads past either end give zeros, never an error.


def _size(data: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.strings.length(data), tf.int64)


def _substr(data: tf.Tensor, position, length) -> tf.Tensor:
    """data[position : position + length] as a string, clipped to the data."""
    size = _size(data)
    start = tf.clip_by_value(tf.cast(position, tf.int64), 0, size)
    return tf.strings.substr(data, start, tf.maximum(tf.cast(length, tf.int64), 0))


def _read(data: tf.Tensor, position, count: int) -> tf.Tensor:
    """int64 [count]: the bytes from `position`, zeros where they lie outside the data."""
    piece = tf.cast(tf.io.decode_raw(_substr(data, position, count), tf.uint8), tf.int64)
    inside = tf.cast(position, tf.int64) >= 0
    piece = _where(inside, piece, tf.zeros_like(piece))
    piece = tf.pad(piece, [[0, count - tf.size(piece)]])
    return tf.ensure_shape(piece, [count])


def _big_endian(values: tf.Tensor, start: int, count: int) -> tf.Tensor:
    result = values[start]
    for index in range(start + 1, start + count):
        result = result * 256 + values[index]
    return result


def _little_endian(values: tf.Tensor, start: int, count: int) -> tf.Tensor:
    result = values[start + count - 1]
    for index in range(start + count - 2, start - 1, -1):
        result = result * 256 + values[index]
    return result


def _equals(data: tf.Tensor, position, literal: bytes) -> tf.Tensor:
    return tf.equal(_substr(data, position, len(literal)), literal)


_PADDING = 64  # zero bytes after the data, so that a loop's reads need no bounds checks


def _padded(data: tf.Tensor) -> tf.Tensor:
    return tf.strings.join([data, bytes(_PADDING)])


def _loop_read(padded: tf.Tensor, position: tf.Tensor, count: int) -> tf.Tensor:
    """int64 [count] at 0 <= position <= size of a `_padded` string: a loop body's read."""
    return tf.cast(tf.io.decode_raw(tf.strings.substr(padded, position, count), tf.uint8), tf.int64)


def _weights(count: int, little: bool) -> tf.Tensor:
    powers = [256**index for index in range(count)]
    return tf.constant(powers if little else powers[::-1], tf.int64)


def _byte_strings() -> tf.Tensor:
    """string [256]: the one-byte string of each value, to write bytes in graph."""
    return tf.constant([bytes([value]) for value in range(256)])


def _le16_string(value: tf.Tensor) -> tf.Tensor:
    table = _byte_strings()
    value = tf.cast(value, tf.int64)
    return tf.strings.join([tf.gather(table, value % 256), tf.gather(table, value // 256 % 256)])


class _Header(NamedTuple):
    """What a format's header says. width/height as stored; orientation as applied (1..8).

    `reason` is checked before the size budgets, `cut` (the data stops before what the header
    promises) after them: a bomb is `too_large` whether or not its data follows.
    """

    reason: tf.Tensor  # string: "" or a reason code
    detail: tf.Tensor  # string: what exactly, for the message
    width: tf.Tensor  # int64
    height: tf.Tensor  # int64
    orientation: tf.Tensor  # int32
    mode: tf.Tensor  # string, in Pillow's mode names
    bits: tf.Tensor  # int32, bits per sample
    cut: tf.Tensor  # bool
    cut_detail: tf.Tensor  # string


def _header(
    reason, detail, width, height, orientation, mode, bits, cut=False, cut_detail=""
) -> _Header:
    return _Header(
        tf.convert_to_tensor(reason, tf.string),
        tf.convert_to_tensor(detail, tf.string),
        tf.cast(width, tf.int64),
        tf.cast(height, tf.int64),
        tf.cast(orientation, tf.int32),
        tf.convert_to_tensor(mode, tf.string),
        tf.cast(bits, tf.int32),
        tf.convert_to_tensor(cut, tf.bool),
        tf.convert_to_tensor(cut_detail, tf.string),
    )


def _first_reason(*conditions) -> tuple[tf.Tensor, tf.Tensor]:
    """(reason, detail) of the first (condition, reason, detail) that holds, else ("", "")."""
    reason, detail = tf.constant(""), tf.constant("")
    for condition, code, text in reversed(conditions):
        reason = _where(condition, code, reason)
        detail = _where(condition, text, detail)
    return reason, detail


def _first(mask: tf.Tensor) -> tf.Tensor:
    """int64: the index of the first True in a 1-D mask, -1 if none."""
    index = tf.argmax(tf.concat([tf.cast(mask, tf.int32), [1]], 0))
    return _where(index < tf.size(mask, out_type=tf.int64), index, -1)


def _last(mask: tf.Tensor) -> tf.Tensor:
    """int64: the index of the last True in a 1-D mask, -1 if none."""
    count = tf.size(mask, out_type=tf.int64)
    return _where(tf.reduce_any(mask), count - 1 - _first(tf.reverse(mask, [0])), -1)


# Sniffing.


def _signature_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    magic = np.zeros((len(_SIGNATURES), _SNIFF_BYTES), np.int64)
    mask = np.zeros((len(_SIGNATURES), _SNIFF_BYTES), bool)
    formats = np.zeros(len(_SIGNATURES), np.int32)
    for row, (name, offset, signature) in enumerate(_SIGNATURES):
        formats[row] = _FORMAT_NAMES.index(name)
        for index, value in enumerate(signature, start=offset):
            magic[row, index] = value
            mask[row, index] = (name, index) not in _MASKED
    return magic, mask, formats


def _sniff(data: tf.Tensor) -> tf.Tensor:
    """int32: the index in _FORMAT_NAMES of the format the magic bytes name, -1 for none."""
    magic, mask, formats = _signature_table()
    head = _read(data, 0, _SNIFF_BYTES)
    enough = _size(data) >= np.array([offset + len(sig) for _, offset, sig in _SIGNATURES])
    matches = tf.reduce_all(tf.equal(head[tf.newaxis], magic) | ~mask, axis=1) & enough
    first = tf.argmax(tf.cast(matches, tf.int32), output_type=tf.int32)
    found = _where(tf.reduce_any(matches), tf.gather(formats, first), -1)
    svg = _FORMAT_NAMES.index("svg")
    return tf.cond(
        found < 0,
        lambda: _where(_looks_like_svg(data), svg, found),
        lambda: found,
    )


def _looks_like_svg(data: tf.Tensor) -> tf.Tensor:
    """SVG text: starts (after a BOM and spaces) with <svg, <?xml or <!doctype svg, has <svg."""
    head = tf.strings.lower(_substr(data, 0, _SVG_PROBE_BYTES))
    bom = tf.strings.substr(head, 0, 3) == b"\xef\xbb\xbf"
    head = _where(bom, _substr(head, 3, _SVG_PROBE_BYTES), head)
    head = tf.strings.strip(head)
    opening = tf.reduce_any(
        [tf.equal(tf.strings.substr(head, 0, len(start)), start) for start in _SVG_STARTS]
    )
    return opening & (tf.size(tf.strings.split(head, b"<svg")) > 1)


# Orientation: EXIF (a TIFF structure) first, else XMP, as Pillow's Image.getexif.


def _tiff_orientation(data: tf.Tensor, start, length) -> tuple[tf.Tensor, tf.Tensor]:
    """(found, value) of the Orientation tag in IFD0 of the TIFF block data[start:+length].

    A leading "Exif\\0\\0" is skipped, as Pillow does. Reads outside the block find nothing.
    """
    skip = _where(_equals(data, start, _EXIF_HEADER), len(_EXIF_HEADER), 0)
    start, length = start + skip, length - skip
    head = _read(data, start, 8)
    little = (head[0] == ord("I")) & (head[1] == ord("I"))
    big = (head[0] == ord("M")) & (head[1] == ord("M"))

    def number(values, first, count):
        return _where(
            little, _little_endian(values, first, count), _big_endian(values, first, count)
        )

    directory = number(head, 4, 4)
    block = _read(data, start + directory, 2 + 12 * _MAX_IFD_ENTRIES)
    count = tf.minimum(number(block, 0, 2), _MAX_IFD_ENTRIES)
    entries = tf.reshape(block[2:], [_MAX_IFD_ENTRIES, 12])
    low, high = entries[:, 0::2], entries[:, 1::2]  # byte pairs: [entries, 6]
    shorts = _where(little, low + 256 * high, 256 * low + high)
    tags, kinds = shorts[:, 0], shorts[:, 1]
    values = _where(
        kinds == 3,
        shorts[:, 4],
        _where(little, shorts[:, 4] + 65536 * shorts[:, 5], 65536 * shorts[:, 4] + shorts[:, 5]),
    )
    index = tf.range(_MAX_IFD_ENTRIES, dtype=tf.int64)
    inside = directory + 2 + 12 * (index + 1) <= length
    valid = (little | big) & (number(head, 2, 2) == 42) & (length >= 8)
    short_or_long = (kinds == 3) | (kinds == 4)
    found = valid & (index < count) & inside & (tags == _ORIENTATION_TAG) & short_or_long
    first = tf.argmax(tf.cast(found, tf.int32))
    return tf.reduce_any(found), tf.gather(values, first)


def _xmp_orientation(data: tf.Tensor, start, length) -> tuple[tf.Tensor, tf.Tensor]:
    """(found, value) of the first `tiff:Orientation="d"` or `<tiff:Orientation>d` in XMP text.

    The pattern of Pillow's Image.getexif: r'tiff:Orientation(="|>)([0-9])'.
    """
    text = _substr(data, start, _where(start >= 0, length, 0))
    following = tf.strings.split(text, _XMP_ORIENTATION)[1:]
    attribute = tf.strings.substr(following, 0, 2) == b'="'
    element = tf.strings.substr(following, 0, 1) == b">"
    digit = _where(
        attribute, tf.strings.substr(following, 2, 1), tf.strings.substr(following, 1, 1)
    )
    digits = tf.constant([str(value).encode() for value in range(10)])
    equal = tf.equal(digit[:, tf.newaxis], digits[tf.newaxis, :])
    found = (attribute | element) & tf.reduce_any(equal, axis=1)
    values = tf.argmax(tf.cast(equal, tf.int32), axis=1, output_type=tf.int32)
    # The first match; a final sentinel (value 1) keeps argmax defined without any.
    found = tf.concat([found, [True]], axis=0)
    values = tf.concat([values, [1]], axis=0)
    first = tf.argmax(tf.cast(found, tf.int32))
    return first < tf.size(found, out_type=tf.int64) - 1, tf.gather(values, first)


def _orientation(data, exif_start, exif_length, xmp_start, xmp_length) -> tf.Tensor:
    """int32 1..8: the EXIF tag when present, else XMP's; values outside 2..8 mean upright."""

    def parse():
        exif_found, exif_value = _tiff_orientation(data, exif_start, exif_length)
        exif_found &= exif_start >= 0
        xmp_found, xmp_value = _xmp_orientation(data, xmp_start, xmp_length)
        value = _where(exif_found, exif_value, _where(xmp_found, tf.cast(xmp_value, tf.int64), 1))
        return tf.cast(_where((value >= 1) & (value <= 8), value, 1), tf.int32)

    metadata = (exif_start >= 0) | (xmp_start >= 0)
    return tf.cond(metadata, parse, lambda: tf.constant(1, tf.int32))


def _orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Applies an EXIF orientation (1..8) as PIL's ImageOps.exif_transpose does."""

    def transpose():
        return tf.transpose(image, [1, 0, 2])

    branches = [
        lambda: image,
        lambda: tf.reverse(image, [1]),  # 2: mirror left-right
        lambda: tf.reverse(image, [0, 1]),  # 3: rotate 180
        lambda: tf.reverse(image, [0]),  # 4: mirror top-bottom
        transpose,  # 5: transpose
        lambda: tf.reverse(transpose(), [1]),  # 6: rotate 90 clockwise (PIL ROTATE_270)
        lambda: tf.reverse(transpose(), [0, 1]),  # 7: transverse
        lambda: tf.reverse(transpose(), [0]),  # 8: rotate 90 counter-clockwise (ROTATE_90)
    ]
    return tf.switch_case(orientation - 1, branches)


# Sample conversions: the module docstring's rules.


def _to_8_bits(values: tf.Tensor) -> tf.Tensor:
    """uint16 samples -> uint8, nearest: (v + 128) // 257."""
    return tf.cast((tf.cast(values, tf.int32) + 128) // 257, tf.uint8)


def _composite_on_white(rgba: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 4] -> uint8 [H, W, 3]: 255 - round((255 - c) * a / 255)."""
    colour = tf.cast(rgba[..., :3], tf.uint16)
    alpha = tf.cast(rgba[..., 3:], tf.uint16)
    covered = ((255 - colour) * alpha + 127) // 255
    return tf.cast(255 - covered, tf.uint8)


def _rgb_or_composite(image: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 3 or 4] -> uint8 [H, W, 3], compositing a fourth (alpha) channel."""
    return tf.cond(
        tf.shape(image)[2] == 4,
        lambda: _composite_on_white(image),
        lambda: tf.ensure_shape(image[..., :3], [None, None, 3]),
    )


# JPEG: follow the segments from SOI to the first scan (SOF, EXIF, XMP) without a loop, then
# decode with libjpeg's ISLOW DCT.
#
# Every segment starts with 0xFF and a marker other than 0x00, so the candidates are those byte
# pairs; each candidate's successor is known from its marker and length, and the chain from
# offset 2 is followed by pointer doubling (_JPEG_LEVELS gathers) instead of a while loop,
# whose per-iteration cost is several times a whole small JPEG's header. The first 64 KiB hold
# the headers of nearly every file; the whole file is searched only when the chain leaves them.

_JPEG_FRAMES = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
_JPEG_DECODED_FRAMES = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive Huffman
_JPEG_WINDOW = 1 << 16
_JPEG_WINDOW_LEVELS = 5  # up to 31 segments: nearly every file, cheaply
_JPEG_LEVELS = 9  # up to 511 segments before the first scan, else corrupt


class _JpegSegments(NamedTuple):
    status: tf.Tensor  # int32: 0 reached the first scan, 1 broken, 2 left the window
    frame: tf.Tensor  # int64 position of the first SOF marker, -1 if none
    exif: tf.Tensor  # int64 position of the first APP1 "Exif" segment's TIFF block, -1
    exif_length: tf.Tensor
    xmp: tf.Tensor  # int64 position of the last APP1 XMP packet, -1
    xmp_length: tf.Tensor


class _JpegCandidates(NamedTuple):
    """Every 0xFF byte followed by a non-zero byte in a window: the possible segment starts."""

    positions: tf.Tensor  # int64 [n], increasing
    marker: tf.Tensor  # int64 [n]
    length: tf.Tensor  # int64 [n]: the segment length field (meaningless for standalone markers)
    successor: tf.Tensor  # int64 [n + 2]: index of the next segment; n: broken; n + 1: unknown


def _jpeg_candidates(data: tf.Tensor, limit) -> _JpegCandidates:
    """The candidates in data[:limit] and each one's successor; a scan start (SOS), an end of
    image (EOI) and the two last nodes (broken, unknown beyond the window) are absorbing."""
    size = _size(data)
    raw = tf.io.decode_raw(_substr(data, 0, limit), tf.uint8)
    known = tf.size(raw, out_type=tf.int64)
    raw = tf.pad(raw, [[0, 4]])
    positions = tf.where((raw[:-4] == 0xFF) & (raw[1:-3] != 0))[:, 0]
    count = tf.size(positions, out_type=tf.int64)
    following = tf.cast(tf.gather(raw, positions[:, tf.newaxis] + [1, 2, 3]), tf.int64)
    marker, length = following[:, 0], following[:, 1] * 256 + following[:, 2]
    fill = marker == 0xFF
    standalone = (marker == 0x01) | ((marker >= 0xD0) & (marker <= 0xD8))
    next_position = positions + _where(fill, 1, _where(standalone, 2, 2 + length))
    index = tf.searchsorted(positions, next_position, out_type=tf.int64)
    found = tf.gather(tf.concat([positions, [-1]], 0), tf.minimum(index, count)) == next_position
    broken, unknown = count, count + 1
    beyond = (next_position + 4 > known) & (known < size)
    successor = _where(found & (fill | standalone | (length >= 2)), index, broken)
    successor = _where(~found & beyond, unknown, successor)
    successor = _where((marker == 0xDA) | (marker == 0xD9), tf.range(count), successor)
    successor = _where((positions + 4 > known) & (known < size), unknown, successor)
    successor = tf.concat([successor, [broken, unknown]], 0)
    return _JpegCandidates(positions, marker, length, successor)


def _jpeg_segments(data: tf.Tensor, limit, levels: int) -> _JpegSegments:
    """The segments from SOI to the first SOS among the candidates in data[:limit], following
    up to 2**levels - 1 of them."""
    size = _size(data)
    candidates, marker, length, table = _jpeg_candidates(data, limit)
    count = tf.size(candidates, out_type=tf.int64)
    broken, outside = count, count + 1
    first = tf.searchsorted(candidates, tf.constant([2], tf.int64), out_type=tf.int64)[0]
    starts = tf.gather(tf.concat([candidates, [-1]], 0), first) == 2
    # The chain's nodes in order: after level k, the first 2**(k+1) of them.
    chain = tf.reshape(_where((first < count) & starts, first, broken), [1])
    for level in range(levels):
        chain = tf.concat([chain, tf.gather(table, chain)], 0)
        if level + 1 < levels:
            table = tf.gather(table, table)
    node = chain[-1]  # absorbing when the chain ends within 2**levels - 1 steps
    end_marker = tf.gather(tf.concat([marker, [0, 0]], 0), node)
    status = _where(
        (node < count) & (end_marker == 0xDA),
        0,
        _where((node == outside) | ((node < count) & (end_marker != 0xD9)), 2, 1),
    )
    # The segments on the chain, before its absorbing end; indices into the candidates.
    on_chain = tf.scatter_nd(chain[:, tf.newaxis], tf.ones_like(chain), [count + 2])[:count] > 0
    frame_index = _first(on_chain & tf.reduce_any(tf.equal(marker[:, tf.newaxis], _JPEG_FRAMES), 1))
    app1 = on_chain & (marker == 0xE1)
    identifiers = tf.strings.substr(
        data, tf.minimum(candidates + 4, size), tf.fill([count], tf.constant(29, tf.int64))
    )
    exif = tf.strings.substr(
        identifiers, tf.zeros([count], tf.int64), tf.fill([count], tf.constant(6, tf.int64))
    )
    exif_index = _first(app1 & (exif == _EXIF_HEADER))
    xmp_index = _last(app1 & (identifiers == _XMP_JPEG_HEADER))

    def position(index, offset):
        return _where(index >= 0, tf.gather(candidates, tf.maximum(index, 0)) + offset, -1)

    def payload_length(index, header):
        return tf.gather(length, tf.maximum(index, 0)) - 2 - len(header)

    return _JpegSegments(
        status=tf.cast(status, tf.int32),
        frame=position(frame_index, 0),
        exif=position(exif_index, 4 + len(_EXIF_HEADER)),
        exif_length=payload_length(exif_index, _EXIF_HEADER),
        xmp=position(xmp_index, 4 + len(_XMP_JPEG_HEADER)),
        xmp_length=payload_length(xmp_index, _XMP_JPEG_HEADER),
    )


def _jpeg(data: tf.Tensor):
    window = _jpeg_segments(data, _JPEG_WINDOW, _JPEG_WINDOW_LEVELS)
    segments = tf.cond(
        window.status == 2,
        lambda: _jpeg_segments(data, _size(data), _JPEG_LEVELS),
        lambda: window,
    )
    segments = _JpegSegments(*segments)
    frame = _read(data, segments.frame, 10)
    marker, precision, components = frame[1], frame[4], frame[9]
    height, width = _big_endian(frame, 5, 2), _big_endian(frame, 7, 2)
    decoded_frame = tf.reduce_any(tf.equal(marker, _JPEG_DECODED_FRAMES))
    reason, detail = _first_reason(
        (segments.status != 0, CORRUPT, "the JPEG markers do not lead to an image"),
        (segments.frame < 0, CORRUPT, "the JPEG has no frame header"),
        (~decoded_frame, UNSUPPORTED_FORMAT, "lossless, hierarchical or arithmetic-coded JPEG"),
        (precision != 8, UNSUPPORTED_FORMAT, "a JPEG of other than 8 bits per sample"),
        (
            ~tf.reduce_any(tf.equal(components, [1, 3, 4])),
            UNSUPPORTED_FORMAT,
            "a JPEG with other than 1, 3 or 4 components",
        ),
    )
    orientation = _orientation(
        data, segments.exif, segments.exif_length, segments.xmp, segments.xmp_length
    )
    mode = tf.gather(["", "L", "", "RGB", "CMYK"], tf.clip_by_value(components, 0, 4))
    header = _header(reason, detail, width, height, orientation, mode, 8)

    def decode():
        # INTEGER_ACCURATE is libjpeg's ISLOW DCT, Pillow's too: identical pixels. CMYK and YCCK
        # (Adobe) are converted by TensorFlow's decoder as Pillow's convert("RGB") does.
        return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")

    return header, decode


# PNG: walk the chunks to IEND (IHDR, tRNS, eXIf, XMP in iTXt), decode with libpng.

_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}


def _png_chunks(data: tf.Tensor):
    """(bad, ended, transparency, exif, exif_length, xmp, xmp_length) from a walk of the chunks.

    Metadata as Pillow keeps it: the last eXIf, the last uncompressed XMP iTXt. The walk stops
    at IEND (position -1), at a chunk running past the end (position > size), or after
    _MAX_PNG_CHUNKS chunks (the rest is libpng's to check).
    """
    size = _size(data)
    padded = _padded(data)
    xmp_keyword = _XMP_PNG_KEYWORD + b"\0"  # the keyword, then compression flag 0
    # record: transparency, exif, exif_length, xmp chunk, xmp chunk length
    empty = tf.constant([0, -1, 0, -1, 0], tf.int64)

    def body(position, steps, record):
        length = tf.reduce_sum(_loop_read(padded, position, 4) * _weights(4, False))
        kind = tf.strings.substr(padded, position + 4, 4)
        exif = kind == b"eXIf"
        xmp = (kind == b"iTXt") & (tf.strings.substr(padded, position + 8, 19) == xmp_keyword)
        update = tf.stack([kind == b"tRNS", exif, exif, xmp, xmp])
        record = tf.where(update, tf.stack([1, position + 8, length, position, length]), record)
        position = _where(kind == b"IEND", -1, position + 12 + length)
        return position, steps + 1, record

    def unfinished(position, steps, record):
        return (position >= 0) & (position < size) & (steps < _MAX_PNG_CHUNKS)

    position, steps, record = tf.while_loop(
        unfinished, body, [tf.constant(8, tf.int64), tf.constant(0), empty]
    )
    ended = (position == -1) | (steps >= _MAX_PNG_CHUNKS)
    bad = position > size
    transparency, exif, exif_length, chunk, chunk_length = tf.unstack(record)
    # The XMP text of an iTXt chunk follows: keyword NUL, 2 flag bytes, language NUL, key NUL.
    skip = len(_XMP_PNG_KEYWORD) + 2
    payload = _substr(data, chunk + 8 + skip, chunk_length - skip)
    parts = tf.strings.split(payload, b"\0", maxsplit=2)
    text_length = tf.cast(tf.strings.length(parts[-1]), tf.int64)
    xmp = _where((chunk >= 0) & (tf.size(parts) == 3), chunk + 8 + chunk_length - text_length, -1)
    return bad, ended, transparency > 0, exif, exif_length, xmp, text_length


# The bit depths the PNG specification allows for each colour type.
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_PAIRS = tuple((colour, depth) for colour, depths in _PNG_DEPTHS.items() for depth in depths)


def _png(data: tf.Tensor):
    ihdr = _read(data, 8, 21)
    width, height = _big_endian(ihdr, 8, 4), _big_endian(ihdr, 12, 4)
    depth, colour = ihdr[16], ihdr[17]
    pair = tf.stack([colour, depth])
    allowed = tf.reduce_any(tf.reduce_all(tf.equal(pair, _PNG_PAIRS), axis=1))
    bad, ended, transparency, exif, exif_length, xmp, xmp_length = _png_chunks(data)
    reason, detail = _first_reason(
        (
            (_big_endian(ihdr, 0, 4) != 13) | ~_equals(data, 12, b"IHDR") | ~allowed,
            CORRUPT,
            "the PNG does not start with a valid IHDR chunk",
        ),
    )
    orientation = _orientation(data, exif, exif_length, xmp, xmp_length)
    mode = tf.gather(
        [_PNG_MODES.get(code, "") for code in range(7)], tf.clip_by_value(colour, 0, 6)
    )
    mode = _where((colour == 0) & (depth == 1), "1", mode)
    mode = _where((colour == 0) & (depth == 16), "I;16", mode)
    cut, cut_detail = bad | ~ended, "the PNG's chunks stop before IEND"
    header = _header(reason, detail, width, height, orientation, mode, depth, cut, cut_detail)
    alpha = (colour == 4) | (colour == 6) | transparency

    def decode():
        def wide():  # 16 bits per sample: the nearest 8-bit value, then compositing
            return tf.cond(
                alpha,
                lambda: _composite_on_white(_to_8_bits(tf.io.decode_png(data, 4, tf.uint16))),
                lambda: _to_8_bits(tf.io.decode_png(data, 3, tf.uint16)),
            )

        def narrow():
            return tf.cond(
                alpha,
                lambda: _composite_on_white(tf.io.decode_png(data, 4)),
                lambda: tf.io.decode_png(data, 3),
            )

        return tf.ensure_shape(tf.cond(depth == 16, wide, narrow), [None, None, 3])

    return header, decode


# GIF: walk the blocks to the end of the first image, rebuild it as a one-frame GIF.


def _colour_table_size(flags: tf.Tensor) -> tf.Tensor:
    """Bytes of the colour table a GIF screen or image descriptor's flags announce."""
    entries = tf.bitwise.left_shift(tf.constant(2, tf.int64), flags & 7)
    return _where(flags & 0x80 != 0, 3 * entries, 0)


def _gif_first_image(data: tf.Tensor):
    """(complete, transparency, descriptor, data_start, data_end) of the first image.

    transparency: the index of the last Graphics Control Extension before the image that sets
    one (as Pillow), -1 if none; descriptor: the image descriptor's position; data: its LZW
    code size byte through the block terminator. Phases: 0 between blocks, 1 in an
    extension's sub-blocks, 2 in the image's. The walk stops after the image (position -1) or
    at anything else (position past the end).
    """
    size = _size(data)
    padded = _padded(data)
    flags = _read(data, 10, 1)[0]
    global_table = _colour_table_size(flags)
    # record: phase, transparency, descriptor, data start, data end
    empty = tf.constant([0, -1, -1, -1, -1], tf.int64)
    beyond = size + 1

    def body(position, steps, record):
        head = _loop_read(padded, position, 10)
        phase = record[0]
        between = phase == 0
        extension = between & (head[0] == 0x21)
        image = between & (head[0] == 0x2C)
        control = extension & (head[1] == 0xF9) & (head[2] >= 4) & (head[3] & 1 == 1)
        local = _colour_table_size(head[9])
        terminator = ~between & (head[0] == 0)
        finished = terminator & (phase == 2)
        next_phase = _where(extension, 1, _where(image, 2, _where(terminator, 0, phase)))
        update = tf.stack([True, control, image, image, finished])
        values = tf.stack([next_phase, head[6], position, position + 10 + local, position + 1])
        record = tf.where(update, values, record)
        position = _where(
            finished,
            -1,
            _where(
                extension,
                position + 2,
                _where(
                    image, position + 11 + local, _where(between, beyond, position + 1 + head[0])
                ),
            ),
        )
        return position, steps + 1, record

    def unfinished(position, steps, record):
        return (position >= 0) & (position < size) & (steps < _MAX_GIF_BLOCKS)

    position, _, record = tf.while_loop(
        unfinished, body, [13 + global_table, tf.constant(0), empty]
    )
    _, transparency, descriptor, start, end = tf.unstack(record)
    return (position == -1) & (end <= size), transparency, descriptor, start, end


def _gif(data: tf.Tensor):
    screen = _read(data, 6, 7)
    screen_width, screen_height = _little_endian(screen, 0, 2), _little_endian(screen, 2, 2)
    global_size = _colour_table_size(screen[4])
    global_table = global_size > 0
    complete, transparency, descriptor_position, start, end = _gif_first_image(data)
    descriptor = _read(data, descriptor_position, 10)
    left, top = _little_endian(descriptor, 1, 2), _little_endian(descriptor, 3, 2)
    frame_width, frame_height = _little_endian(descriptor, 5, 2), _little_endian(descriptor, 7, 2)
    local_size = _colour_table_size(descriptor[9])
    local_table = local_size > 0
    # Pillow's canvas: the logical screen, grown to hold the first frame.
    width = tf.maximum(screen_width, left + frame_width)
    height = tf.maximum(screen_height, top + frame_height)
    reason, detail = _first_reason(
        (descriptor_position < 0, CORRUPT, "the GIF holds no image"),
        (~global_table & ~local_table, CORRUPT, "the GIF's first image has no colour table"),
        ((frame_width == 0) | (frame_height == 0), CORRUPT, "the GIF's first image is empty"),
    )
    cut_detail = "the GIF stops before the end of its first image"
    header = _header(reason, detail, width, height, 1, "P", 8, ~complete, cut_detail)

    def decode():
        table_start = _where(local_table, descriptor_position + 10, 13)
        table_size = _where(local_table, local_size, global_size)
        transparent = (transparency >= 0) & (3 * transparency < table_size)

        def table(position, length, used):
            original = _substr(data, position, length)
            white = tf.strings.join(
                [
                    _substr(original, 0, 3 * tf.maximum(transparency, 0)),
                    b"\xff\xff\xff",
                    _substr(original, 3 * transparency + 3, length),
                ]
            )
            return _where(used & transparent, white, original)

        rebuilt = tf.strings.join(
            [
                _substr(data, 0, 6),
                _le16_string(frame_width),
                _le16_string(frame_height),
                _substr(data, 10, 3),
                table(13, global_size, ~local_table),
                b",\0\0\0\0",
                _substr(data, descriptor_position + 5, 5),
                table(descriptor_position + 10, local_size, local_table),
                _substr(data, start, end - start),
                b";",
            ]
        )
        frame = tf.io.decode_gif(rebuilt)[0]
        entry_zero = tf.cast(_read(data, table_start, 3), tf.uint8)
        fill = _where(transparency >= 0, tf.constant([255, 255, 255], tf.uint8), entry_zero)
        paddings = [[top, height - top - frame_height], [left, width - left - frame_width], [0, 0]]
        covered = tf.pad(tf.ones([frame_height, frame_width, 1], tf.bool), paddings)
        return _where(covered, tf.pad(frame, paddings), fill)

    return header, decode


# BMP: the header, then the rows decoded in graph (palette, 24 and 32 bits, Pillow's masks).

# 32-bit BI_BITFIELDS masks Pillow decodes (red, green, blue, alpha) -> byte of each channel.
_BMP_MASKS = (
    ((0xFF0000, 0xFF00, 0xFF, 0x0), (2, 1, 0, -1)),
    ((0xFF000000, 0xFF0000, 0xFF00, 0x0), (3, 2, 1, -1)),
    ((0xFF000000, 0xFF00, 0xFF, 0x0), (3, 1, 0, -1)),
    ((0xFF000000, 0xFF0000, 0xFF00, 0xFF), (3, 2, 1, 0)),
    ((0xFF, 0xFF00, 0xFF0000, 0xFF000000), (0, 1, 2, 3)),
    ((0xFF0000, 0xFF00, 0xFF, 0xFF000000), (2, 1, 0, 3)),
    ((0xFF000000, 0xFF00, 0xFF, 0xFF0000), (3, 1, 0, 2)),
    ((0x0, 0x0, 0x0, 0x0), (2, 1, 0, 3)),
)
_BI_RGB, _BI_RLE8, _BI_RLE4, _BI_BITFIELDS = 0, 1, 2, 3


class _BmpLayout(NamedTuple):
    """Where a BMP's pixels are and how they are packed (int64/bool scalars)."""

    core: tf.Tensor  # OS/2 BITMAPCOREHEADER: 16-bit sizes, 3-byte palette entries
    width: tf.Tensor
    height: tf.Tensor
    top_down: tf.Tensor
    bits: tf.Tensor
    compression: tf.Tensor
    colours: tf.Tensor  # palette entries
    palette_start: tf.Tensor
    entry: tf.Tensor  # bytes per palette entry
    offset: tf.Tensor  # of the pixel rows
    stride: tf.Tensor  # bytes per row, padded to 4
    masks: tf.Tensor  # int64 [4]: red, green, blue, alpha bit fields
    channel_bytes: tf.Tensor  # int64 [4]: the byte of red, green, blue, alpha (-1: none)


def _bmp_layout(data: tf.Tensor) -> _BmpLayout:
    head = _read(data, 0, 70)
    header_size = _little_endian(head, 14, 4)
    core = header_size == 12
    width = _where(core, _little_endian(head, 18, 2), _little_endian(head, 18, 4))
    stored_height = _where(core, _little_endian(head, 20, 2), _little_endian(head, 22, 4))
    top_down = ~core & (head[25] == 0xFF)  # a negative height, as Pillow reads it
    bits = _where(core, _little_endian(head, 24, 2), _little_endian(head, 28, 2))
    colours = _where(core, 0, _little_endian(head, 46, 4))
    colours = _where(
        colours == 0, tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.minimum(bits, 32)), colours
    )
    compression = _where(core, _BI_RGB, _little_endian(head, 30, 4))
    masks = tf.stack([_little_endian(head, 54 + 4 * index, 4) for index in range(4)])
    masks = _where(tf.range(4, dtype=tf.int64) < _where(header_size >= 56, 4, 3), masks, 0)
    known = tf.reduce_all(
        tf.equal(tf.constant([mask for mask, _ in _BMP_MASKS], tf.int64), masks), 1
    )
    channel_bytes = tf.gather(
        tf.constant([order for _, order in _BMP_MASKS] + [(2, 1, 0, -1)], tf.int64),
        _where(
            (compression == _BI_BITFIELDS) & tf.reduce_any(known) & (bits == 32),
            tf.argmax(tf.cast(known, tf.int32), output_type=tf.int64),
            len(_BMP_MASKS),  # BGR(X): 24 bits, and 32-bit BI_RGB
        ),
    )
    palette_start, entry = 14 + header_size, _where(core, 3, 4)
    offset = _little_endian(head, 10, 4)
    # Pillow: a pixel offset pointing right after the header skips the palette.
    offset = _where((bits <= 8) & (offset == palette_start), offset + entry * colours, offset)
    return _BmpLayout(
        core=core,
        width=width,
        height=_where(top_down, 2**32 - stored_height, stored_height),
        top_down=top_down,
        bits=bits,
        compression=compression,
        colours=colours,
        palette_start=palette_start,
        entry=entry,
        offset=offset,
        stride=tf.bitwise.bitwise_and(tf.bitwise.right_shift(width * bits + 31, 3), ~3),
        masks=masks,
        channel_bytes=channel_bytes,
    )


def _bmp(data: tf.Tensor):
    layout = _bmp_layout(data)
    width, height, bits, compression = layout.width, layout.height, layout.bits, layout.compression
    palette = (bits == 1) | (bits == 4) | (bits == 8)
    bitfields = compression == _BI_BITFIELDS
    known_masks = tf.reduce_any(
        tf.reduce_all(
            tf.equal(tf.constant([mask for mask, _ in _BMP_MASKS], tf.int64), layout.masks), 1
        )
    )
    bgr_masks = tf.reduce_all(tf.equal(layout.masks[:3], [0xFF0000, 0xFF00, 0xFF]))
    reason, detail = _first_reason(
        ((width >= 2**31) | (height >= 2**31), CORRUPT, "the BMP header gives a negative size"),
        (bits == 16, UNSUPPORTED_FORMAT, "a 16-bit BMP"),
        (
            (compression == _BI_RLE8) | (compression == _BI_RLE4),
            UNSUPPORTED_FORMAT,
            "an RLE-compressed BMP",
        ),
        (
            (compression != _BI_RGB) & ~bitfields,
            UNSUPPORTED_FORMAT,
            "a BMP compressed other than RLE (JPEG, PNG, ...)",
        ),
        (
            ~palette & (bits != 24) & (bits != 32),
            UNSUPPORTED_FORMAT,
            "a BMP of other than 1, 4, 8, 24 or 32 bits per pixel",
        ),
        (
            bitfields & (palette | ((bits == 24) & ~bgr_masks) | ((bits == 32) & ~known_masks)),
            UNSUPPORTED_FORMAT,
            "a BMP with bit fields other than Pillow's",
        ),
        (palette & (layout.colours > 65536), CORRUPT, "the BMP palette is too large"),
    )
    alpha = layout.channel_bytes[3] >= 0
    mode = _where(palette, "P", _where(alpha, "RGBA", "RGB"))
    needed = layout.offset + layout.stride * (height - 1) + (width * bits + 7) // 8
    cut, cut_detail = needed > _size(data), "the BMP pixel rows are cut short"
    header = _header(reason, detail, width, height, 1, mode, bits, cut, cut_detail)

    def decode():
        rows = _bmp_rows(data, layout)
        image = tf.cond(
            palette, lambda: _bmp_indexed(data, rows, layout), lambda: _bmp_packed(rows, layout)
        )
        return tf.ensure_shape(image, [None, None, 3])

    return header, decode


def _bmp_rows(data: tf.Tensor, layout: _BmpLayout) -> tf.Tensor:
    """uint8 [height, stride]: the pixel rows, top row first, a short last row zero-filled."""
    size = layout.stride * layout.height
    rows = tf.io.decode_raw(_substr(data, layout.offset, size), tf.uint8)
    rows = tf.pad(rows, [[0, size - tf.cast(tf.size(rows), tf.int64)]])
    rows = tf.reshape(rows, tf.stack([layout.height, layout.stride]))
    return tf.cond(layout.top_down, lambda: rows, lambda: tf.reverse(rows, [0]))


def _bmp_indexed(data: tf.Tensor, rows: tf.Tensor, layout: _BmpLayout) -> tf.Tensor:
    """1, 4 or 8 bits per pixel, most significant first, through the BGR(X) palette."""
    bits = layout.bits
    per_byte = 8 // bits
    shifts = tf.cast(8 - bits * tf.range(1, per_byte + 1), tf.uint8)
    mask = tf.cast(tf.bitwise.left_shift(1, tf.cast(bits, tf.int32)) - 1, tf.uint8)
    values = tf.bitwise.bitwise_and(tf.bitwise.right_shift(rows[:, :, tf.newaxis], shifts), mask)
    indices = tf.reshape(values, tf.stack([layout.height, layout.stride * per_byte]))
    indices = tf.cast(indices[:, : layout.width], tf.int32)
    # 256 entries: those the header lists, black after them (or where the data stops).
    entries = tf.minimum(layout.colours, 256)
    table = tf.io.decode_raw(_substr(data, layout.palette_start, layout.entry * entries), tf.uint8)
    table = tf.pad(table, [[0, 4 * 256 - tf.cast(tf.size(table), tf.int64)]])
    table = tf.reshape(table[: layout.entry * 256], tf.stack([256, layout.entry]))
    return tf.gather(tf.gather(table, [2, 1, 0], axis=1), indices)


def _bmp_packed(rows: tf.Tensor, layout: _BmpLayout) -> tf.Tensor:
    """24 or 32 bits per pixel, channels at their bytes; alpha composited on white."""
    channels = layout.bits // 8
    shape = tf.stack([layout.height, layout.width, channels])
    pixels = tf.reshape(rows[:, : layout.width * channels], shape)
    order = layout.channel_bytes
    colour = tf.gather(pixels, order[:3], axis=2)
    return tf.cond(
        order[3] >= 0,
        lambda: _composite_on_white(tf.concat([colour, tf.gather(pixels, order[3:], axis=2)], 2)),
        lambda: colour,
    )


# WebP: walk the RIFF chunks (VP8X, VP8, VP8L, EXIF, XMP), decode a still image with libwebp.


def _webp(data: tf.Tensor):
    size = _size(data)
    riff_end = tf.minimum(_little_endian(_read(data, 4, 4), 0, 4) + 8, size)

    padded = _padded(data)
    # record: bitstream chunk, exif, exif_length, xmp, xmp_length, animation seen, cut short
    empty = tf.constant([-1, -1, 0, -1, 0, 0, 0], tf.int64)

    def body(position, steps, record):
        length = tf.reduce_sum(_loop_read(padded, position + 4, 4) * _weights(4, True))
        kind = tf.strings.substr(padded, position, 4)
        stream = ((kind == b"VP8 ") | (kind == b"VP8L")) & (record[0] < 0)
        exif = (kind == b"EXIF") & (record[1] < 0)
        xmp = (kind == b"XMP ") & (record[3] < 0)
        animation = (kind == b"ANIM") | (kind == b"ANMF")
        cut = position + 8 + length > size
        update = tf.stack([stream, exif, exif, xmp, xmp, animation, cut])
        values = tf.stack([position, position + 8, length, position + 8, length, 1, 1])
        record = tf.where(update, values, record)
        return position + 8 + length + length % 2, steps + 1, record

    def unfinished(position, steps, record):
        return (position + 8 <= riff_end) & (steps < _MAX_WEBP_CHUNKS)

    position, _, record = tf.while_loop(
        unfinished, body, [tf.constant(12, tf.int64), tf.constant(0), empty]
    )
    stream, exif, exif_length, xmp, xmp_length, animated, bad = tf.unstack(record)
    animated, bad = animated > 0, bad > 0
    extended = _equals(data, 12, b"VP8X")
    vp8x = _read(data, 20, 10)
    flags = vp8x[0]
    canvas_width = _little_endian(vp8x, 4, 3) + 1
    canvas_height = _little_endian(vp8x, 7, 3) + 1
    lossless = _equals(data, stream, b"VP8L")
    bitstream = _read(data, stream + 8, 10)
    vp8_width = tf.bitwise.bitwise_and(_little_endian(bitstream, 6, 2), 0x3FFF)
    vp8_height = tf.bitwise.bitwise_and(_little_endian(bitstream, 8, 2), 0x3FFF)
    vp8_ok = (bitstream[0] & 1 == 0) & tf.reduce_all(tf.equal(bitstream[3:6], [0x9D, 0x01, 0x2A]))
    vp8l_bits = _little_endian(bitstream, 1, 4)
    vp8l_width = (vp8l_bits & 0x3FFF) + 1
    vp8l_height = (tf.bitwise.right_shift(vp8l_bits, 14) & 0x3FFF) + 1
    vp8l_ok = (bitstream[0] == 0x2F) & (tf.bitwise.right_shift(vp8l_bits, 29) == 0)
    stream_width = _where(lossless, vp8l_width, vp8_width)
    stream_height = _where(lossless, vp8l_height, vp8_height)
    width = _where(extended, canvas_width, stream_width)
    height = _where(extended, canvas_height, stream_height)
    animated |= extended & (flags & 0x02 != 0)
    reason, detail = _first_reason(
        (animated, UNSUPPORTED_FORMAT, "an animated WebP"),
        (stream < 0, CORRUPT, "the WebP holds no image"),
        (~_where(lossless, vp8l_ok, vp8_ok), CORRUPT, "the WebP bitstream header is damaged"),
        (
            extended & ((canvas_width != stream_width) | (canvas_height != stream_height)),
            CORRUPT,
            "the WebP canvas and its image differ in size",
        ),
    )
    alpha = _where(
        extended, flags & 0x10 != 0, lossless & (tf.bitwise.right_shift(vp8l_bits, 28) & 1 == 1)
    )
    orientation = _orientation(data, exif, exif_length, xmp, xmp_length)
    mode, cut_detail = _where(alpha, "RGBA", "RGB"), "the WebP chunks are cut short"
    header = _header(reason, detail, width, height, orientation, mode, 8, bad, cut_detail)

    def decode():
        # channels=0: the file's own count (3, or 4 with alpha); never used for animations.
        return _rgb_or_composite(tf.io.decode_webp(data)[0])

    return header, decode


def _refused(format_index: tf.Tensor):
    """The header of anything not decoded here: empty, not an image, or a refused format."""

    def parse(data: tf.Tensor):
        empty = _size(data) == 0
        reason = _where(empty, EMPTY, _where(format_index < 0, NOT_AN_IMAGE, UNSUPPORTED_FORMAT))
        descriptions = ("",) * len(ACCEPTED_FORMATS) + tuple(_REFUSED_FORMATS.values())
        detail = _where(format_index < 0, "", tf.gather(descriptions, tf.maximum(format_index, 0)))
        header = _header(reason, detail, 0, 0, 1, "", 0)
        return header, _no_pixels

    return parse


def _no_pixels() -> tf.Tensor:
    return tf.fill([_NO_PIXELS_SIDE, _NO_PIXELS_SIDE, 3], tf.constant(255, tf.uint8))


# Budgets, facts and messages.


def _checked(header: _Header, options: config_lib.TransformConfig) -> _Header:
    """The header with the size budgets applied (from the header alone: nothing decoded)."""
    width, height = header.width, header.height
    short, long = tf.minimum(width, height), tf.maximum(width, height)
    ratio = tf.cast(long, tf.float64) / tf.cast(tf.maximum(short, 1), tf.float64)
    reason, detail = _first_reason(
        (header.reason != "", header.reason, header.detail),
        ((width <= 0) | (height <= 0), CORRUPT, "the header gives an empty image"),
        (
            width * height > options.max_pixels,
            TOO_LARGE,
            f"the budget is {options.max_pixels} pixels",
        ),
        (short < options.min_side, TOO_SMALL, f"the minimum is {options.min_side} pixels"),
        (
            ratio > options.max_aspect_ratio,
            EXTREME_ASPECT,
            f"the limit is {options.max_aspect_ratio}",
        ),
        (header.cut, CORRUPT, header.cut_detail),
    )
    return header._replace(reason=reason, detail=detail)


def _facts(format_name, header: _Header) -> dict[str, tf.Tensor]:
    """The header facts a caller sees: width and height as displayed (after orientation)."""
    turned = header.orientation >= 5
    return {
        "reason": header.reason,
        "detail": header.detail,
        "format": tf.convert_to_tensor(format_name, tf.string),
        "width": _where(turned, header.height, header.width),
        "height": _where(turned, header.width, header.height),
        "orientation": header.orientation,
        "mode": header.mode,
        "bits": header.bits,
    }


def _message(facts: dict[str, tf.Tensor]) -> tf.Tensor:
    """One bounded line: "<reason>: <sentence>[: <detail>][ (<w>x<h> pixels)]"."""
    codes = tf.constant(list(REASONS))
    sentence = tf.gather(
        list(REASONS.values()), tf.argmax(tf.cast(tf.equal(codes, facts["reason"]), tf.int32))
    )
    detail = _where(facts["detail"] != "", tf.strings.join([": ", facts["detail"]]), "")
    sized = (facts["width"] > 0) & (facts["height"] > 0)
    dimensions = tf.strings.join(
        [
            " (",
            tf.strings.as_string(facts["width"]),
            "x",
            tf.strings.as_string(facts["height"]),
            " pixels)",
        ]
    )
    return tf.strings.join([facts["reason"], ": ", sentence, detail, _where(sized, dimensions, "")])


def _assert_accepted(accepted: tf.Tensor, facts: dict[str, tf.Tensor]) -> tf.Tensor:
    """True, or tf.errors.InvalidArgumentError with `_message` (built only on failure)."""

    def refuse():
        with tf.control_dependencies([tf.debugging.Assert(False, [_message(facts)])]):
            return tf.constant(False)

    return tf.cond(accepted, lambda: tf.constant(True), refuse)


# Crop box and resize policy.


_DETECTION_SIDE = 512  # faces are looked for on a copy this size at most, then mapped back


@functools.cache
def face_crop_fn(options: config_lib.TransformConfig) -> CropFunction | None:
    """The crop function of `options.face_crop`: the largest face, None without face_crop.

    MTCNN in TensorFlow ops (pipeline.data.face_detection, weights from the mtcnn wheel) looks
    at the upright image shrunk to at most 512 pixels a side (area averaging); the largest
    face's square box, grown by `options.face_margin` of its side on every side and clipped
    to the image, is cut from the full-resolution image. An image without a face is kept
    whole. The detector's weights are constants of the graph, so a SavedModel carries them.
    """
    if not options.face_crop:
        return None
    from pipeline.data import face_detection  # the weights load only when asked for

    detector = face_detection.FaceDetector()
    margin = tf.constant(options.face_margin, tf.float32)

    def crop_box(image: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(image)
        height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        scale = tf.minimum(1.0, _DETECTION_SIDE / tf.maximum(height, width))
        small_size = tf.cast(tf.round(tf.stack([height, width]) * scale), tf.int32)
        small = tf.cast(
            tf.round(tf.image.resize(image, tf.maximum(small_size, 1), "area")), tf.uint8
        )
        box, found = detector.largest_face_box(small, margin)
        top, left = tf.floor(box[0] * height), tf.floor(box[1] * width)
        bottom, right = tf.math.ceil(box[2] * height), tf.math.ceil(box[3] * width)
        top, left = tf.maximum(top, 0.0), tf.maximum(left, 0.0)
        bottom, right = tf.minimum(bottom, height), tf.minimum(right, width)
        crop_box = tf.cast(tf.stack([top, left, bottom - top, right - left]), tf.int32)
        return tf.where(found, crop_box, tf.zeros([4], tf.int32))  # no face: the whole image

    return crop_box


@tf.autograph.experimental.do_not_convert
def crop(image: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
    """The part of an image inside a box: the seam for a face detector, before the resize.

    Args:
      image: uint8 [H, W, 3].
      box: int32 [4], (top, left, height, width) in the image's pixels, clipped to it; a box
        with no area (height or width <= 0) keeps the whole image.

    Returns:
      uint8 [h, w, 3].
    """
    shape = tf.shape(image, out_type=tf.int32)
    box = tf.cast(box, tf.int32)
    top = tf.clip_by_value(box[0], 0, shape[0] - 1)
    left = tf.clip_by_value(box[1], 0, shape[1] - 1)
    height = tf.clip_by_value(box[2], 0, shape[0] - top)
    width = tf.clip_by_value(box[3], 0, shape[1] - left)
    whole = (box[2] <= 0) | (box[3] <= 0)
    begin = _where(whole, [0, 0, 0], tf.stack([top, left, 0]))
    size = _where(whole, shape, tf.stack([height, width, 3]))
    return tf.slice(image, begin, size)


def _area(image: tf.Tensor, height, width) -> tf.Tensor:
    """Area averaging, rounded half to even. An average of 0..255 values stays within float32
    error of that range, which the rounding absorbs: no clipping pass is needed."""
    size = tf.cast(tf.stack([height, width]), tf.int32)
    return tf.cast(tf.round(tf.image.resize(image, size, method="area")), tf.uint8)


@tf.autograph.experimental.do_not_convert
def resize(image: tf.Tensor, options: config_lib.TransformConfig = DEFAULT_OPTIONS) -> tf.Tensor:
    """An upright RGB image of any size to uint8 [S, S, 3] by the options' resize policy.

    Area averaging (tf.image.resize(method="area")), rounded half to even. `crop` cuts the
    centre square first (offsets rounded down); `pad` fits the long side to S, rounds the short
    side half up (at least 1 pixel) and centres the result on black (offsets rounded down).

    Args:
      image: uint8 [H, W, 3], H and W at least 1.
      options: image_size (S) and resize_policy.

    Returns:
      uint8 [S, S, 3].
    """
    return _resize_turned(image, tf.constant(1, tf.int32), options)


# For each orientation 1..8: whether the displayed rows are the stored columns, and whether a
# displayed box's first (second) stored offset counts from the far end of the stored rows
# (columns). Derived from the transposes and flips of `_orient`.
_TURNED = (False, False, False, False, True, True, True, True)
_FLIP_ROWS = (False, False, True, True, False, True, True, False)
_FLIP_COLUMNS = (False, True, True, False, False, False, True, True)


def _resize_turned(image: tf.Tensor, orientation: tf.Tensor, options: config_lib.TransformConfig):
    """`resize` of `_orient(image, orientation)`, with the orientation applied to the S x S
    result instead of the full image: the same geometry (a displayed crop box is mapped back to
    the stored pixels exactly), a fraction of the cost. The area sums run in the stored order,
    so a value within float32 error of a rounding boundary may land one level apart from
    turning first; every caller of the transform gets this same definition."""
    side = options.image_size
    shape = tf.shape(image, out_type=tf.int64)
    stored_height, stored_width = shape[0], shape[1]
    index = orientation - 1
    turned = tf.gather(_TURNED, index)
    height = _where(turned, stored_width, stored_height)  # as displayed
    width = _where(turned, stored_height, stored_width)
    if options.resize_policy == "crop":
        short = tf.minimum(height, width)
        top, left = (height - short) // 2, (width - short) // 2
        first, second = _where(turned, left, top), _where(turned, top, left)
        first = _where(tf.gather(_FLIP_ROWS, index), stored_height - first - short, first)
        second = _where(tf.gather(_FLIP_COLUMNS, index), stored_width - second - short, second)
        image = tf.slice(image, tf.stack([first, second, 0]), tf.stack([short, short, 3]))
    if options.resize_policy != "pad":
        resized = _orient(_area(image, side, side), orientation)
        return tf.ensure_shape(resized, [side, side, 3])
    long = tf.maximum(height, width)
    new_height = tf.maximum((2 * height * side + long) // (2 * long), 1)
    new_width = tf.maximum((2 * width * side + long) // (2 * long), 1)
    stored_size = (_where(turned, new_width, new_height), _where(turned, new_height, new_width))
    resized = _orient(_area(image, *stored_size), orientation)
    top, left = (side - new_height) // 2, (side - new_width) // 2
    paddings = [[top, side - new_height - top], [left, side - new_width - left], [0, 0]]
    return tf.ensure_shape(tf.pad(resized, paddings), [side, side, 3])


# The graph: sniff, header, checks, decode, crop, resize.

_PARSERS = (_jpeg, _png, _gif, _bmp, _webp)


def _analyse(image_bytes, options: config_lib.TransformConfig, stage: str):
    """Sniff, header, checks, decode. stage "inspect": facts; "status": (facts, image), the
    image decoded only for an accepted file; "raise": (facts, image) after asserting that the
    file is accepted. The image is uint8 [H, W, 3] as stored: facts["orientation"] turns it
    upright."""
    data = tf.ensure_shape(tf.convert_to_tensor(image_bytes, tf.string), [])
    format_index = _sniff(data)

    def branch(parse, name):
        def run():
            header, decode = parse(data)
            facts = _facts(name, _checked(header, options))
            if stage == "inspect":
                return facts
            accepted = tf.equal(facts["reason"], "")
            if stage == "raise":
                with tf.control_dependencies([_assert_accepted(accepted, facts)]):
                    image = tf.identity(decode())
            else:
                image = tf.cond(accepted, decode, _no_pixels)
            return facts, tf.ensure_shape(image, [None, None, 3])

        return run

    refused_name = _where(
        format_index < 0, "", tf.gather(_FORMAT_NAMES, tf.maximum(format_index, 0))
    )
    branches = [branch(parse, name) for parse, name in zip(_PARSERS, ACCEPTED_FORMATS, strict=True)]
    branches.append(branch(_refused(format_index), refused_name))
    accepted_index = (format_index >= 0) & (format_index < len(_PARSERS))
    return tf.switch_case(_where(accepted_index, format_index, len(_PARSERS)), branches)


def _finish(image, facts, options: config_lib.TransformConfig, crop_fn: CropFunction | None):
    """The stored pixels of a decoded file to uint8 [S, S, 3], upright."""
    crop_fn = crop_fn or face_crop_fn(options)
    if crop_fn is None:
        return _resize_turned(image, facts["orientation"], options)
    upright = _orient(image, facts["orientation"])  # a detector must see the face upright
    return resize(crop(upright, crop_fn(upright)), options)


@tf.autograph.experimental.do_not_convert
def inspect(
    image_bytes, options: config_lib.TransformConfig = DEFAULT_OPTIONS
) -> dict[str, tf.Tensor]:
    """The header facts of one encoded image, read in graph; decodes nothing, never raises.

    Args:
      image_bytes: scalar tf.string, the file's bytes.
      options: the budgets to check.

    Returns:
      {"reason": string ("" if the file would be transformed, else a code of REASONS),
       "detail": string (what exactly was refused, e.g. "an animated WebP"),
       "format": string (one of ACCEPTED_FORMATS or a refused format; "" if none),
       "width", "height": int64 pixels as displayed (after orientation; 0 if unknown),
       "orientation": int32 1..8 (the EXIF/XMP orientation applied),
       "mode": string (Pillow's mode names: "RGB", "L", "P", "RGBA", "CMYK", "I;16", ...),
       "bits": int32 bits per sample (or per pixel for BMP)}.
    """
    return _analyse(image_bytes, options, "inspect")


@tf.autograph.experimental.do_not_convert
def decode(image_bytes, options: config_lib.TransformConfig = DEFAULT_OPTIONS) -> tf.Tensor:
    """One encoded image decoded as displayed: what `transform` resizes (and a detector sees).

    Oriented, transparency composited on white, 8-bit RGB; checked as `transform` checks.

    Args:
      image_bytes: scalar tf.string, the file's bytes.
      options: the budgets to check (image_size and resize_policy play no part).

    Returns:
      uint8 [H, W, 3], H and W as displayed.

    Raises:
      tf.errors.InvalidArgumentError: as `transform`.
    """
    facts, image = _analyse(image_bytes, options, "raise")
    return _orient(image, facts["orientation"])


@tf.autograph.experimental.do_not_convert
def transform(
    image_bytes,
    options: config_lib.TransformConfig = DEFAULT_OPTIONS,
    crop_fn: CropFunction | None = None,
) -> tf.Tensor:
    """One encoded image to the pixels a model sees: the transform, in TensorFlow ops.

    Works eagerly, in tf.function, in tf.map_fn and in a SavedModel (no py_function).

    Args:
      image_bytes: scalar tf.string, the file's bytes (format sniffed from the content).
      options: config.TransformConfig.
      crop_fn: optional, maps the decoded image (uint8 [H, W, 3], as displayed) to a crop box
        int32 [4] (top, left, height, width) applied before the resize policy (see `crop`).

    Returns:
      uint8 [S, S, 3], S = options.image_size.

    Raises:
      tf.errors.InvalidArgumentError: a rejected file, with one bounded message
        "<reason>: <sentence>[: <detail>][ (<w>x<h> pixels)]", or a damaged file that the
        format's decoder refuses (its own bounded message).
    """
    facts, image = _analyse(image_bytes, options, "raise")
    return _finish(image, facts, options, crop_fn)


@tf.autograph.experimental.do_not_convert
def transform_with_status(
    image_bytes,
    options: config_lib.TransformConfig = DEFAULT_OPTIONS,
    crop_fn: CropFunction | None = None,
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """(facts, pixels): `inspect`'s facts and, when facts["reason"] is "", the pixels.

    A file refused from its header is not decoded (its pixels are a white stand-in). A file
    whose header passes but whose data the decoder refuses still raises
    tf.errors.InvalidArgumentError: `Transformer` turns that into the reason `corrupt`.
    """
    facts, image = _analyse(image_bytes, options, "status")
    return facts, _finish(image, facts, options, crop_fn)


@tf.autograph.experimental.do_not_convert
def transform_batch(
    image_bytes,
    options: config_lib.TransformConfig = DEFAULT_OPTIONS,
    crop_fn: CropFunction | None = None,
    max_batch_pixels: int | None = None,
    parallel_iterations: int = 1,
) -> tf.Tensor:
    """A batch of encoded images (strings [N]) to uint8 [N, S, S, 3], for serving signatures.

    Args:
      image_bytes: tf.string [N].
      options, crop_fn: as for `transform`.
      max_batch_pixels: if set, the sum of the images' pixels (from their headers) must not
        exceed it; checked before anything is decoded.
      parallel_iterations: images decoded at once (1 bounds memory to one image's decode).

    Raises:
      tf.errors.InvalidArgumentError: as `transform`, for the first rejected image, or
        "too_large: ..." when the batch is over max_batch_pixels.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    checks = []
    if max_batch_pixels is not None:
        pixels = tf.map_fn(
            lambda one: (lambda facts: facts["width"] * facts["height"])(inspect(one, options)),
            image_bytes,
            fn_output_signature=tf.int64,
        )
        total = tf.reduce_sum(pixels)
        message = tf.strings.join(
            [
                f"{TOO_LARGE}: the images of the request hold ",
                tf.strings.as_string(total),
                f" pixels, over the request budget of {max_batch_pixels}",
            ]
        )
        checks.append(tf.debugging.Assert(total <= max_batch_pixels, [message]))
    side = options.image_size
    with tf.control_dependencies(checks):
        return tf.map_fn(
            lambda one: transform(one, options, crop_fn),
            image_bytes,
            fn_output_signature=tf.TensorSpec([side, side, 3], tf.uint8),
            parallel_iterations=parallel_iterations,
        )


# The per-image Python call of the data job.


class Result(NamedTuple):
    """What `Transformer` found for one file: its pixels (None if rejected) and header facts."""

    pixels: np.ndarray | None  # uint8 [S, S, 3]
    reason: str  # "" when accepted, else a code of REASONS
    detail: str
    format: str
    width: int
    height: int
    orientation: int
    mode: str
    bits: int


_TEXT_FACTS = ("reason", "detail", "format", "mode")
_NUMBER_FACTS = ("width", "height", "orientation", "bits")


def _packed(facts: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """(string [4], int64 [4]): the facts in two tensors, two conversions for Python."""
    texts = tf.stack([facts[name] for name in _TEXT_FACTS])
    numbers = tf.stack([tf.cast(facts[name], tf.int64) for name in _NUMBER_FACTS])
    return texts, numbers


@functools.cache
def _functions(options: config_lib.TransformConfig, crop_fn: CropFunction | None):
    """(one, many, facts): the traced graphs of a Transformer, shared in the process."""
    side = options.image_size

    def one(data):
        facts, pixels = transform_with_status(data, options, crop_fn)
        return (*_packed(facts), pixels)

    def many(data):
        signature = (
            tf.TensorSpec([len(_TEXT_FACTS)], tf.string),
            tf.TensorSpec([len(_NUMBER_FACTS)], tf.int64),
            tf.TensorSpec([side, side, 3], tf.uint8),
        )
        # One image decoded at a time: a batch's memory is that of its largest image.
        return tf.map_fn(one, data, fn_output_signature=signature, parallel_iterations=1)

    def facts(data):
        return _packed(inspect(data, options))

    scalar, vector = [tf.TensorSpec([], tf.string)], [tf.TensorSpec([None], tf.string)]
    return (
        tf.function(one, input_signature=scalar, autograph=False),
        tf.function(many, input_signature=vector, autograph=False),
        tf.function(facts, input_signature=scalar, autograph=False),
    )


def _decoder_message(error: tf.errors.OpError) -> str:
    """The decoder's own words in a graph execution error, without node names and stacks."""
    lines = [re.sub(r"\{\{[^}]*\}\}", "", line).strip() for line in error.message.splitlines()]
    skipped = ("Graph execution error", "Detected at node", "File ", "[[", "[Op:")
    kept = [line for line in lines if line and not line.startswith(skipped)]
    return (kept[-1] if kept else "the decoder refused the data")[:200]


class Transformer:
    """The transform as a Python call, for a Beam worker: bytes in, a `Result` out.

    The graphs are traced once per (options, crop_fn) and shared by every Transformer in the
    process. Never raises for bad content: a file the decoder refuses is `corrupt`, with the
    decoder's message as detail. Picklable (it is rebuilt from its options).
    """

    def __init__(
        self,
        options: config_lib.TransformConfig = DEFAULT_OPTIONS,
        crop_fn: CropFunction | None = None,
    ):
        self.options = options
        self.crop_fn = crop_fn
        self._one, self._many, self._facts = _functions(options, crop_fn)

    def __reduce__(self):
        return Transformer, (self.options, self.crop_fn)

    def __call__(self, image_bytes: bytes) -> Result:
        """Transforms one file's bytes; see `Result`."""
        data = tf.constant(image_bytes, tf.string)
        try:
            texts, numbers, pixels = self._one(data)
        except tf.errors.InvalidArgumentError as error:
            texts, numbers = self._facts(data)
            return _result(None, texts.numpy(), numbers.numpy(), _decoder_message(error))
        return _result(pixels, texts.numpy(), numbers.numpy())

    def many(self, images: list[bytes]) -> list[Result]:
        """`self(image)` for each image, in one graph call (e.g. a Beam BatchElements batch).

        A file that the decoder refuses fails the whole call; the batch is then done one file
        at a time, so the results are always those of `__call__`.
        """
        if not images:
            return []
        try:
            texts, numbers, pixels = self._many(tf.constant(images, tf.string))
        except tf.errors.InvalidArgumentError:
            return [self(image) for image in images]
        texts, numbers, pixels = texts.numpy(), numbers.numpy(), pixels.numpy()
        return [
            _result(pixels[index], texts[index], numbers[index]) for index in range(len(images))
        ]


def _result(pixels, texts: np.ndarray, numbers: np.ndarray, corrupt: str | None = None) -> Result:
    """A Result from packed facts; `corrupt`: the decoder refused the data, with this message."""
    reason, detail, image_format, mode = (text.decode() for text in texts)
    if corrupt is not None:
        reason, detail = CORRUPT, corrupt
    if reason:
        pixels = None
    elif isinstance(pixels, tf.Tensor):
        pixels = pixels.numpy()
    width, height, orientation, bits = (int(number) for number in numbers)
    return Result(pixels, reason, detail, image_format, width, height, orientation, mode, bits)
