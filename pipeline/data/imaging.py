"""Image cleaning, the one implementation: sniff, check the header, decode, normalise, resize.

Pure functions on bytes and arrays, no Beam: `pipeline.preprocess` (Beam) and the TFDS
`folder` config call `clean_image_bytes`, and the exported model's in-graph preprocessing is
tested against `resize`.

Order of the checks, cheapest and safest first:
  1. the content's magic bytes decide the format (never the file name);
  2. the header alone gives the size, so an over-budget image (a decompression bomb) is
     rejected before a single pixel is decoded;
  3. truncated files are corrupt, never grey-filled: Pillow raises on them (its
     LOAD_TRUNCATED_IMAGES stays False), and plain JPEGs, which OpenCV decodes twice as fast
     but would silently complete with grey, must first pass a marker walk to their EOI;
  4. EXIF orientation, then conversion of any mode (palette, grayscale, alpha, CMYK, 16-bit)
     to 8-bit RGB, then the optional face crop and the resize.
"""

import ctypes
import dataclasses
import functools
import io
import struct
import warnings
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageOps

IMAGE_SIZE = 256

# Resize policies: "stretch" ignores the aspect ratio (as the seed did, and as the exported
# model's tf.image.resize does); "pad" keeps it and pads with black to a square, like
# tf.image.resize_with_pad; "crop" keeps it and cuts the centre square.
RESIZE_POLICIES = ("stretch", "pad", "crop")

# cv2.INTER_AREA (see _resample) is what tf.image.resize(method="area") computes: on
# LFW-style faces the mean absolute difference is 0.000/255 when shrinking and 0.02/255 for
# 250 -> 256; bilinear with antialias=True, the next closest, differs by 0.09-0.16/255.
INTERPOLATION = cv2.INTER_AREA
TF_RESIZE_METHOD = "area"

# Statuses: every input ends in exactly one.
ACCEPTED = "accepted"
REJECTED = "rejected"
DUPLICATE = "duplicate"
STATUSES = (ACCEPTED, REJECTED, DUPLICATE)

# Reason codes of rejected inputs, with the sentence the report shows for each.
EMPTY = "empty"
UNREADABLE = "unreadable"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
CORRUPT = "corrupt"
TOO_SMALL = "too_small"
TOO_LARGE = "too_large"
EXTREME_ASPECT = "extreme_aspect"
LABEL_CONFLICT = "label_conflict"
NO_FACE = "no_face"
REASONS = {
    EMPTY: "the file has no bytes",
    UNREADABLE: "the file could not be read (broken link, permissions, I/O error)",
    NOT_AN_IMAGE: "the content is not an image (text, HTML, archive, ...)",
    UNSUPPORTED_FORMAT: "an image format that is not decoded here (SVG, HEIC, AVIF, PSD, ...)",
    CORRUPT: "the image is truncated or damaged",
    TOO_SMALL: "the shorter side is under the minimum",
    TOO_LARGE: "over the pixel or byte budget (checked from the header, before decoding)",
    EXTREME_ASPECT: "the long side is too many times the short side",
    LABEL_CONFLICT: "the same bytes are filed under more than one label",
    NO_FACE: "no face found (with --face-crop and --no-keep-images-without-face)",
}

# Formats decoded here (Pillow decodes them everywhere); others are recognised but refused.
SUPPORTED_FORMATS = ("jpeg", "png", "gif", "webp", "bmp")
_PIL_FORMATS = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
}
# (offset, magic bytes, format), checked in order.
_SIGNATURES = (
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"),
    (0, b"BM", "bmp"),
    (0, b"II*\x00", "tiff"),
    (0, b"MM\x00*", "tiff"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"),
    (0, b"\xff\x4f\xff\x51", "jpeg2000"),
    (0, b"8BPS", "psd"),
    (0, b"%PDF", "pdf"),
    (0, b"\x00\x00\x01\x00", "ico"),
    (0, b"qoif", "qoi"),
    (0, b"\xff\x0a", "jpegxl"),
    (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "jpegxl"),
)
_FTYP_BRANDS = {
    b"avif": "avif",
    b"avis": "avif",
    b"heic": "heic",
    b"heix": "heic",
    b"hevc": "heic",
    b"mif1": "heic",
    b"msf1": "heic",
}
_SVG_PROBE_BYTES = 2048
_GRAYSCALE_TOLERANCE = 2.0  # mean |R-G| + |G-B| below this (JPEG chroma noise) is grayscale
_STATISTICS_SIDE = 64  # colour statistics come from an area-averaged copy this size
ALLOCATOR_TOP_PAD = 16 * 2**20  # freed heap that keep_freed_memory lets each process keep
_M_TOP_PAD = -2  # glibc's mallopt parameter number (malloc.h)
_FACE_DETECTION_SIDE = 512  # faces are found on a copy this size, then mapped back
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    TypeError,
    KeyError,
    ZeroDivisionError,
    Image.DecompressionBombError,
)


@dataclasses.dataclass(frozen=True)
class CleaningOptions:
    """How images are validated and normalised: the same options for Beam and TFDS.

    The fields carry CLI metadata, so a stage config can embed them by inheriting from this
    class (see `pipeline.preprocess.PreprocessConfig`) and get them back with `options_from`.
    """

    image_size: int = dataclasses.field(
        default=IMAGE_SIZE, metadata={"help": "side of the square output images, in pixels"}
    )
    resize_policy: str = dataclasses.field(
        default="stretch",
        metadata={
            "help": "stretch: ignore the aspect ratio (what the served model does); "
            "pad: keep it, pad with black; crop: keep it, cut the centre square",
            "choices": RESIZE_POLICIES,
        },
    )
    face_crop: bool = dataclasses.field(
        default=False,
        metadata={"help": "crop around the largest face (OpenCV Haar cascade) before resizing"},
    )
    keep_images_without_face: bool = dataclasses.field(
        default=True,
        metadata={"help": "with --face-crop, keep whole images where no face is found"},
    )
    face_margin: float = dataclasses.field(
        default=0.25,
        metadata={"help": "with --face-crop, margin added on each side, as a fraction of the face"},
    )
    min_side: int = dataclasses.field(
        default=32, metadata={"help": "reject images whose shorter side is under this (pixels)"}
    )
    max_pixels: int = dataclasses.field(
        default=50_000_000,
        metadata={"help": "pixel budget: larger images are rejected from their header"},
    )
    max_file_bytes: int = dataclasses.field(
        default=100 * 2**20, metadata={"help": "files larger than this are rejected unread"}
    )
    max_aspect_ratio: float = dataclasses.field(
        default=3.0, metadata={"help": "reject images whose long side exceeds this times the short"}
    )
    split_fractions: tuple[float, ...] = dataclasses.field(
        default=(0.8, 0.1, 0.1),
        metadata={"help": "train, validation and test fractions (by content hash)"},
    )

    def __post_init__(self):
        if self.resize_policy not in RESIZE_POLICIES:
            raise ValueError(
                f"resize policy must be one of {RESIZE_POLICIES}, got {self.resize_policy!r}"
            )
        if self.image_size < 1 or self.min_side < 1 or self.max_pixels < 1:
            raise ValueError("image size, minimum side and pixel budget must be positive")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"max aspect ratio must be at least 1, got {self.max_aspect_ratio}")
        if self.face_margin < 0:
            raise ValueError(f"face margin must not be negative, got {self.face_margin}")


DEFAULT_OPTIONS = CleaningOptions()


def options_from(config) -> CleaningOptions:
    """The CleaningOptions held by any config that has their fields (e.g. by inheriting)."""
    fields = dataclasses.fields(CleaningOptions)
    return CleaningOptions(**{field.name: getattr(config, field.name) for field in fields})


class ImageInfo(NamedTuple):
    """What validation found out about one input: its status, and properties for the report.

    `width`/`height` are of the original as displayed (after EXIF orientation), 0 when the
    header could not be read; `grayscale` and `brightness` (0..255) describe the cleaned pixels.
    """

    status: str
    reason: str = ""
    width: int = 0
    height: int = 0
    format: str = ""
    mode: str = ""
    orientation: int = 1
    grayscale: bool | None = None
    brightness: float | None = None
    face: bool | None = None


def keep_freed_memory(pad_bytes: int = ALLOCATOR_TOP_PAD) -> bool:
    """Asks glibc's malloc to keep `pad_bytes` of freed heap rather than return it at once.

    Each image allocates and frees a few hundred kilobytes (the decoder's scratch, the resized
    copy). By default glibc hands the top of the heap back to the kernel after each image and
    the next one page-faults it in again: about 100 us an image on the 2-core benchmark
    machine, a fifth of the whole cleaning (and of a bare decode+resize loop too). The setting
    is process-wide, so it is made by the Beam workers (`preprocess.ValidateImages.setup`) and
    by the benchmark before its baseline, never on import. Returns whether it took effect
    (False where the C library has no mallopt, e.g. musl or macOS).
    """
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_TOP_PAD, pad_bytes))
    except (OSError, AttributeError, TypeError):
        return False


def sniff_format(data: bytes) -> str | None:
    """The image format named by the content's magic bytes, or None if it is not an image."""
    for offset, magic, image_format in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return image_format
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:1] == b"P" and data[1:2] in b"123456" and data[2:3] in b" \t\r\n":
        return "pnm"  # Netpbm: PBM, PGM, PPM
    if data[4:8] == b"ftyp" and data[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[data[8:12]]
    if _looks_like_svg(data[:_SVG_PROBE_BYTES]):
        return "svg"
    return None


def _looks_like_svg(head: bytes) -> bool:
    text = head.decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n").lower()
    return text.startswith(("<svg", "<?xml", "<!doctype svg")) and "<svg" in text


def clean_image_bytes(
    data: bytes, options: CleaningOptions = DEFAULT_OPTIONS
) -> tuple[np.ndarray | None, ImageInfo]:
    """Validates and cleans one encoded image.

    Args:
      data: the file's bytes, whatever its name claims.
      options: the cleaning options.

    Returns:
      (image, info): `image` is uint8 RGB (size, size, 3) when `info.status` is "accepted",
      else None and `info.reason` is one of REASONS. Never raises for bad content.
    """
    if not data:
        return None, ImageInfo(REJECTED, EMPTY)
    image_format = sniff_format(data)
    if image_format is None:
        return None, ImageInfo(REJECTED, NOT_AN_IMAGE)
    if image_format not in SUPPORTED_FORMATS:
        return None, ImageInfo(REJECTED, UNSUPPORTED_FORMAT, format=image_format)
    if len(data) > options.max_file_bytes:
        return None, ImageInfo(REJECTED, TOO_LARGE, format=image_format)
    info = plain_jpeg_header(data) if image_format == "jpeg" else None
    picture = None  # plain JPEGs (info found above) are decoded by OpenCV, without Pillow
    if info is None:
        try:
            picture = _open_header(data, image_format)
        except Image.DecompressionBombError:  # beyond even Pillow's guard: report the size
            width, height = header_size(data, image_format)
            return None, ImageInfo(REJECTED, TOO_LARGE, width, height, image_format)
        except _DECODE_ERRORS:
            return None, ImageInfo(REJECTED, CORRUPT, format=image_format)
        info = _header_info(picture, image_format)
    elif _beyond_pillow_guard(info.width * info.height):
        return None, info._replace(status=REJECTED, reason=TOO_LARGE)
    reason = _size_problem(info.width, info.height, options)
    if reason:
        return None, info._replace(status=REJECTED, reason=reason)
    try:
        rgb = _decode(picture, data, info)
    except _DECODE_ERRORS:
        return None, info._replace(status=REJECTED, reason=CORRUPT)
    face = None
    if options.face_crop:
        box = find_largest_face(rgb)
        face = box is not None
        if box is not None:
            rgb = crop_around(rgb, box, options.face_margin)
        elif not options.keep_images_without_face:
            return None, info._replace(status=REJECTED, reason=NO_FACE, face=False)
    image = resize(rgb, options.image_size, options.resize_policy)
    grayscale, brightness = colour_statistics(image)
    return image, info._replace(
        status=ACCEPTED, grayscale=grayscale, brightness=brightness, face=face
    )


def _open_header(data: bytes, image_format: str) -> Image.Image:
    """Opens lazily: Pillow parses the header only, so nothing is decoded yet."""
    with warnings.catch_warnings():
        # The pixel budget is checked by the caller; Pillow's own guard still raises
        # DecompressionBombError beyond twice Image.MAX_IMAGE_PIXELS.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[image_format]])


def _decode(picture: Image.Image, data: bytes, info: ImageInfo) -> np.ndarray:
    """The full decode, as displayed (EXIF orientation applied), in 8-bit RGB.

    Plain RGB and grayscale JPEGs, most of any scraped set, take OpenCV's decoder, twice as
    fast as Pillow's; as cv2.imdecode fills a truncated file with grey, `jpeg_is_complete`
    vets the data first. Everything else takes Pillow, which raises on truncated data; PNGs
    are vetted by their chunk CRCs first (`png_is_intact`), which Pillow's decoder skips.
    """
    if info.format == "jpeg" and info.mode in ("RGB", "L"):
        if not jpeg_is_complete(data):
            raise OSError("the JPEG data stops before its end-of-image marker")
        flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
        rgb = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        if rgb is None:
            raise OSError("OpenCV could not decode the JPEG")
        return orient(rgb, info.orientation)
    if info.format == "png" and not png_is_intact(data):
        raise OSError("a PNG chunk fails its CRC or the file stops before IEND")
    picture.load()
    if info.orientation != 1:
        picture = ImageOps.exif_transpose(picture)
    return to_rgb(picture)


def plain_jpeg_header(data: bytes) -> ImageInfo | None:
    """What Pillow's header parse would say of a plain JPEG, read by hand, or None.

    Plain: the segments from SOI to the first scan follow each other cleanly, one 8-bit
    baseline, extended or progressive frame of 1 (L) or 3 (RGB) components, at most one EXIF
    segment whose orientation, if any, is a plain SHORT, and no XMP (Pillow also takes an
    orientation from there). That is nearly every photo and face crop, and they go straight to
    OpenCV; anything else returns None and takes Pillow's parse. A fifth of Pillow's time.
    """
    position, length = 2, len(data)
    frame, orientation, exif_segments = None, 1, 0
    while position + 4 <= length:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker not in _HEADER_SEGMENTS and marker not in _PLAIN_FRAMES and marker != 0xDA:
            return None
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if end > length or end < position + 4:
            return None
        payload = data[position + 4 : end]
        if marker == 0xDA:  # start of scan: the header is over
            if frame is None:
                return None
            width, height, components = frame
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            mode = "L" if components == 1 else "RGB"
            return ImageInfo(ACCEPTED, "", width, height, "jpeg", mode, orientation)
        if marker in _PLAIN_FRAMES:
            if frame is not None or len(payload) < 6:
                return None
            precision, height, width, components = struct.unpack(">BHHB", payload[:6])
            if precision != 8 or components not in (1, 3) or not width or not height:
                return None
            frame = (width, height, components)
        elif marker == 0xE1 and payload.startswith(b"Exif\0\0"):
            exif_segments += 1
            orientation = _exif_orientation(payload[6:])
            if exif_segments > 1 or orientation is None:
                return None
        elif marker == 0xE1 and payload.startswith(b"http://ns.adobe.com/xap/1.0/\0"):
            return None
        position = end
    return None


_PLAIN_FRAMES = frozenset((0xC0, 0xC1, 0xC2))  # baseline, extended and progressive Huffman
# The other segments a plain JPEG may have before its first scan: DHT, DQT, DRI, APPn, COM.
_HEADER_SEGMENTS = frozenset((0xC4, 0xDB, 0xDD, *range(0xE0, 0xF0), 0xFE))


def _exif_orientation(tiff: bytes) -> int | None:
    """The orientation in IFD0 of EXIF's TIFF structure: 1 when absent, None when unusual."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (magic, offset) = struct.unpack(order + "HI", tiff[2:8])
        if magic != 42:
            return None
        (count,) = struct.unpack(order + "H", tiff[offset : offset + 2])
        for entry in range(offset + 2, offset + 2 + 12 * count, 12):
            tag, kind, values = struct.unpack(order + "HHI", tiff[entry : entry + 8])
            if tag == 0x0112:
                if kind != 3 or values != 1:  # SHORT, one value
                    return None
                (value,) = struct.unpack(order + "H", tiff[entry + 8 : entry + 10])
                return value if 1 <= value <= 8 else 1
    except (KeyError, struct.error):
        return None
    return 1


def _beyond_pillow_guard(pixels: int) -> bool:
    """Whether Pillow would refuse to open an image this large (DecompressionBombError)."""
    limit = Image.MAX_IMAGE_PIXELS
    return bool(limit) and pixels > 2 * limit


def png_is_intact(data: bytes) -> bool:
    """Whether every chunk of a PNG, through IEND, carries its right CRC.

    Pillow's decoder does not check the CRCs of the image data (IDAT) and zlib's own checksum
    comes only at the end of the stream, so a PNG with flipped bytes or a zero-filled tail
    decodes into wrong pixels without an error. Pillow's `verify()` checks every chunk's CRC
    (a CRC-32 over bytes already in memory: microseconds).
    """
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as picture:
            picture.verify()
    except _DECODE_ERRORS:
        return False
    return True


def jpeg_is_complete(data: bytes) -> bool:
    """Whether a JPEG's segments and entropy-coded scans run all the way to its EOI marker.

    Walks the markers: segments are skipped by their length (so an EXIF thumbnail's own end
    marker is never mistaken for the image's), and inside scans only stuffed 0xFF00 bytes and
    restart markers are passed over. A download cut anywhere never reaches EOI.
    """
    position, length = 2, len(data)
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= length:
            return False
        marker = data[position + 1]
        if marker == 0xD9:  # EOI
            return True
        if marker in _MARKERS_WITHOUT_LENGTH:
            position += 1 if marker == 0xFF else 2
            continue
        if position + 4 > length:
            return False
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")


# 0xFF00: a stuffed 0xFF in scan data; 0xD0-0xD7: restart markers; 0x01: TEM; 0xFFFF: fill.
_MARKERS_WITHOUT_LENGTH = frozenset((0x00, 0x01, 0xFF, *range(0xD0, 0xD8)))


# EXIF orientation -> the array operation that displays the image upright.
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, -1)[::-1],
    8: lambda a: np.rot90(a),
}


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Applies an EXIF orientation (1-8) to an (height, width, 3) array, as exif_transpose."""
    if orientation not in _ORIENTATIONS:
        return image
    return np.ascontiguousarray(_ORIENTATIONS[orientation](image))


def header_size(data: bytes, image_format: str) -> tuple[int, int]:
    """(width, height) read from a PNG, GIF, BMP or JPEG header by hand, (0, 0) if unknown.

    Only for images that Pillow refuses to even open (over twice Image.MAX_IMAGE_PIXELS), so
    that the manifest still says how large the bomb claimed to be.
    """
    try:
        if image_format == "png" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if image_format == "gif":
            return struct.unpack("<HH", data[6:10])
        if image_format == "bmp":
            width, height = struct.unpack("<ii", data[18:26])
            return width, abs(height)
        if image_format == "jpeg":
            return _jpeg_size(data)
    except struct.error:
        pass
    return 0, 0


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """The size in the first start-of-frame marker, walking the segments after SOI."""
    position = 2
    while position + 9 < len(data):
        if data[position] != 0xFF:
            return 0, 0
        marker = data[position + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        position += 2 + length
    return 0, 0


def _header_info(picture: Image.Image, image_format: str) -> ImageInfo:
    orientation = _orientation(picture)
    width, height = picture.size
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: displayed sides swap
        width, height = height, width
    return ImageInfo(
        ACCEPTED,
        width=width,
        height=height,
        format=image_format,
        mode=picture.mode,
        orientation=orientation,
    )


def _orientation(picture: Image.Image) -> int:
    try:
        value = picture.getexif().get(0x0112, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _size_problem(width: int, height: int, options: CleaningOptions) -> str:
    if width * height > options.max_pixels:
        return TOO_LARGE
    if min(width, height) < options.min_side:
        return TOO_SMALL
    if max(width, height) > options.max_aspect_ratio * min(width, height):
        return EXTREME_ASPECT
    return ""


def to_rgb(picture: Image.Image) -> np.ndarray:
    """Any Pillow mode as uint8 RGB (height, width, 3).

    16-bit and 32-bit integer modes are scaled down (Pillow's own convert clips them at 255),
    transparency is composited on white, CMYK and palette images go through Pillow.
    """
    mode = picture.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _to_8_bit(np.asarray(picture), mode)
        return np.repeat(gray[:, :, np.newaxis], 3, axis=2)
    if mode == "P" and "transparency" in picture.info:
        picture = picture.convert("RGBA")
    if mode in ("PA", "LA", "La", "RGBa"):
        picture = picture.convert("RGBA")
    if picture.mode == "RGBA":
        white = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(white, picture)
    if picture.mode == "L":  # OpenCV expands gray to RGB several times faster than Pillow
        return cv2.cvtColor(np.asarray(picture), cv2.COLOR_GRAY2RGB)
    return np.asarray(picture if picture.mode == "RGB" else picture.convert("RGB"))


def _to_8_bit(values: np.ndarray, mode: str) -> np.ndarray:
    values = values.astype(np.float64)
    if mode == "F":
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
    else:
        # 16-bit sources (mode I;16, or I from 16-bit PNG/TIFF) use the full 0..65535 range.
        scale = 1.0 / 257.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 1.0
    return np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)


def colour_statistics(image: np.ndarray) -> tuple[bool, float]:
    """(grayscale, brightness) of an RGB image, for the report's shortcut check.

    grayscale: no colour up to JPEG's chroma noise; brightness: mean pixel value, 0..255.
    Both from a 64 x 64 area-averaged copy (`_area_average`): as good for a mean, far cheaper.
    """
    small = _area_average(image, _STATISTICS_SIDE)
    red, green, blue = cv2.split(small)  # OpenCV: a third of numpy's time on 64 x 64 pixels
    difference = (
        cv2.sumElems(cv2.absdiff(red, green))[0] + cv2.sumElems(cv2.absdiff(green, blue))[0]
    )
    grayscale = difference / red.size < _GRAYSCALE_TOLERANCE
    return grayscale, round(sum(cv2.mean(small)[:3]) / 3, 1)


def _area_average(image: np.ndarray, side: int) -> np.ndarray:
    """A (side, side) INTER_AREA copy, halving first while the image is at least twice that.

    OpenCV's area resize has a vectorised path for exact halvings only: 256 -> 128 -> 64 costs
    a quarter of one 256 -> 64 pass, and differs from it by rounding (at most 1/255 a pixel).
    """
    height, width = image.shape[:2]
    while height >= 2 * side and width >= 2 * side and height % 2 == 0 and width % 2 == 0:
        height, width = height // 2, width // 2
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if (height, width) == (side, side):
        return image
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


def resize(image: np.ndarray, size: int = IMAGE_SIZE, policy: str = "stretch") -> np.ndarray:
    """Resizes an RGB image to (size, size, 3) by a policy; the one resize of the project.

    Args:
      image: uint8 array (height, width, 3).
      size: the output side.
      policy: "stretch" (reproduced in TensorFlow by
        tf.image.resize(images, (size, size), method="area")), "pad" (keep the aspect ratio,
        centre, pad with black) or "crop" (keep the aspect ratio, cut the centre square).

    Returns:
      uint8 array (size, size, 3).
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
    height, width = image.shape[:2]
    if policy == "stretch":
        return _resample(image, size, size)
    if policy == "pad":
        scale = size / max(height, width)
        new_height = max(1, round(height * scale))
        new_width = max(1, round(width * scale))
        canvas = np.zeros((size, size, 3), dtype=np.uint8)
        top, left = (size - new_height) // 2, (size - new_width) // 2
        canvas[top : top + new_height, left : left + new_width] = _resample(
            image, new_width, new_height
        )
        return canvas
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return _resample(image[top : top + side, left : left + side], size, size)


def _resample(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.INTER_AREA, one axis at a time when one grows and the other shrinks.

    OpenCV switches INTER_AREA to another kernel when either axis grows; TensorFlow's area
    resize is separable. Two one-axis passes agree with it in every case (mean difference
    under 0.3/255, at most 1.2/255 on a 200 x 500 image), one pass only when both axes shrink
    or both grow.
    """
    old_height, old_width = image.shape[:2]
    if (old_height, old_width) == (height, width):
        return np.ascontiguousarray(image)
    mixed = (old_width < width and old_height > height) or (
        old_width > width and old_height < height
    )
    if mixed:
        image = cv2.resize(image, (width, old_height), interpolation=INTERPOLATION)
    return cv2.resize(image, (width, height), interpolation=INTERPOLATION)


@functools.cache
def _face_detector() -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    detector = cv2.CascadeClassifier(path)
    if detector.empty():
        raise RuntimeError(f"OpenCV could not load its face cascade from {path}")
    return detector


def find_largest_face(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """The (x, y, width, height) box of the largest frontal face in an RGB image, or None."""
    height, width = image.shape[:2]
    scale = min(1.0, _FACE_DETECTION_SIDE / max(height, width))
    small = _resample(image, max(1, round(width * scale)), max(1, round(height * scale)))
    gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    minimum = max(16, round(min(gray.shape) * 0.1))
    faces = _face_detector().detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(minimum, minimum)
    )
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda box: box[2] * box[3])
    return tuple(round(value / scale) for value in (x, y, w, h))


def crop_around(image: np.ndarray, box: tuple[int, int, int, int], margin: float) -> np.ndarray:
    """The square around `box` grown by `margin` of its side on each side, clipped to the image."""
    height, width = image.shape[:2]
    x, y, w, h = box
    side = round(max(w, h) * (1 + 2 * margin))
    side = min(side, height, width)
    centre_x, centre_y = x + w / 2, y + h / 2
    left = int(min(max(0, round(centre_x - side / 2)), width - side))
    top = int(min(max(0, round(centre_y - side / 2)), height - side))
    return image[top : top + side, left : left + side]


def thumbnail(data: bytes, size: int, max_pixels: int = 50_000_000) -> np.ndarray | None:
    """A small RGB preview of any decodable image (for the report), or None; never raises.

    Unlike `clean_image_bytes` it shows what it can: no size or face checks, but the same
    pixel budget, so a bomb is never decoded.
    """
    image_format = sniff_format(data) if data else None
    if image_format not in SUPPORTED_FORMATS:
        return None
    try:
        picture = _open_header(data, image_format)
        if picture.size[0] * picture.size[1] > max_pixels:
            return None
        picture.draft("RGB", (size, size))
        picture.load()
        rgb = to_rgb(ImageOps.exif_transpose(picture))
    except (*_DECODE_ERRORS, Image.DecompressionBombError):
        return None
    return resize(rgb, size, "pad")
