"""pipeline.imaging: every awkward input gets the right verdict, and cleaned pixels are right."""

import dataclasses
import functools
import gzip
import io
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.data import imaging
from tests.support import drawn_faces

OPTIONS = imaging.CleaningOptions()


def photo(width: int = 120, height: int = 100, seed: int = 0) -> np.ndarray:
    """A smooth, colourful RGB array (compresses like a photo, unlike noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [
        127 + 120 * np.sin(x / (7 + 3 * k) + rng.uniform(0, 6)) * np.cos(y / (11 + k))
        for k in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, image_format: str, **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, image_format, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


@functools.cache
def bomb_png(side: int = 30000) -> bytes:
    """A complete, valid 1-bit PNG of side x side black pixels: ~110 KB that decodes to 900 MB."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    chunks = [compressor.compress(row * 1000) for _ in range(side // 1000)]
    data = b"".join(chunks) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def jpeg_with_orientation(array: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(array, "JPEG", quality=95, exif=exif.tobytes())


def verdict(data: bytes, options: imaging.CleaningOptions = OPTIONS) -> tuple[str, str]:
    image, info = imaging.clean_image_bytes(data, options)
    assert (image is not None) == (info.status == imaging.ACCEPTED)
    return info.status, info.reason


# ---------------------------------------------------------------------------------------------
# Sniffing: the content decides, never the name.


@pytest.mark.parametrize(
    "data, expected",
    [
        (encode(photo(), "JPEG"), "jpeg"),
        (encode(photo(), "PNG"), "png"),
        (encode(photo(), "GIF"), "gif"),
        (encode(photo(), "WEBP"), "webp"),
        (encode(photo(), "BMP"), "bmp"),
        (encode(photo(), "TIFF"), "tiff"),
        (b"\xef\xbb\xbf  <?xml version='1.0'?>\n<svg xmlns='http://www.w3.org/2000/svg'/>", "svg"),
        (b"<svg width='10' height='10'></svg>", "svg"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "heic"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "avif"),
        (b"%PDF-1.7\n", "pdf"),
        (b"8BPS\x00\x01", "psd"),
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", None),
        (b"<?xml version='1.0'?><rss></rss>", None),
        (b"hello, I am a text file named photo.jpg\n", None),
        (gzip.compress(b"\xff\xd8\xff\xe0 not really"), None),
        (b"\x00" * 64, None),
    ],
)
def test_sniff_format_reads_the_magic_bytes(data, expected):
    assert imaging.sniff_format(data) == expected


# ---------------------------------------------------------------------------------------------
# Verdicts.


@pytest.mark.parametrize(
    "data, status, reason",
    [
        (b"", imaging.REJECTED, imaging.EMPTY),
        (b"just some text\n", imaging.REJECTED, imaging.NOT_AN_IMAGE),
        (b"<html><body>Access denied</body></html>", imaging.REJECTED, imaging.NOT_AN_IMAGE),
        (
            b"<svg xmlns='http://www.w3.org/2000/svg'/>",
            imaging.REJECTED,
            imaging.UNSUPPORTED_FORMAT,
        ),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", imaging.REJECTED, imaging.UNSUPPORTED_FORMAT),
        (encode(photo(), "JPEG"), imaging.ACCEPTED, ""),
        (encode(photo(), "PNG"), imaging.ACCEPTED, ""),
        (encode(photo(), "GIF"), imaging.ACCEPTED, ""),
        (encode(photo(), "WEBP"), imaging.ACCEPTED, ""),
        (encode(photo(), "BMP"), imaging.ACCEPTED, ""),
        (encode(photo(), "TIFF"), imaging.REJECTED, imaging.UNSUPPORTED_FORMAT),
        (encode(photo(20, 60), "PNG"), imaging.REJECTED, imaging.TOO_SMALL),
        (encode(photo(400, 100), "PNG"), imaging.REJECTED, imaging.EXTREME_ASPECT),
        (encode(photo(100, 400), "PNG"), imaging.REJECTED, imaging.EXTREME_ASPECT),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, imaging.REJECTED, imaging.CORRUPT),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, imaging.REJECTED, imaging.CORRUPT),
    ],
)
def test_verdicts(data, status, reason):
    assert verdict(data) == (status, reason)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "GIF", "BMP", "WEBP"])
@pytest.mark.parametrize("kept", [0.5, 0.9])
def test_truncated_files_are_corrupt_not_grey_filled(image_format, kept):
    data = encode(photo(160, 120), image_format)
    # OpenCV would return this file as an image with grey rows; the verdict must be corrupt.
    assert verdict(data[: int(len(data) * kept)]) == (imaging.REJECTED, imaging.CORRUPT)


def test_jpeg_cut_before_its_end_marker_is_corrupt():
    data = encode(photo(160, 120), "JPEG")
    assert verdict(data[:-4]) == (imaging.REJECTED, imaging.CORRUPT)


def test_pixel_budget_is_checked_from_the_header():
    data = encode(photo(200, 150), "PNG")
    options = dataclasses.replace(OPTIONS, max_pixels=200 * 150 - 1)
    image, info = imaging.clean_image_bytes(data, options)
    assert image is None
    assert (info.status, info.reason, info.width, info.height) == (
        imaging.REJECTED,
        imaging.TOO_LARGE,
        200,
        150,
    )
    assert verdict(data, dataclasses.replace(OPTIONS, max_pixels=200 * 150)) == (
        imaging.ACCEPTED,
        "",
    )


def test_byte_budget():
    data = encode(photo(), "PNG")
    options = dataclasses.replace(OPTIONS, max_file_bytes=len(data) - 1)
    assert verdict(data, options) == (imaging.REJECTED, imaging.TOO_LARGE)


def test_decompression_bomb_is_too_large_without_decoding():
    # In a fresh process, so that the peak memory (ru_maxrss) is this call's alone: decoding
    # the 30000 x 30000 PNG would need 900 MB for the 1-bit image alone, 2.7 GB as RGB.
    code = (
        "import resource, sys\n"
        "from pipeline.data import imaging\n"
        "data = sys.stdin.buffer.read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "image, info = imaging.clean_image_bytes(data)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(info.status, info.reason, info.width, info.height, grown)\n"
    )
    bomb = bomb_png()
    assert len(bomb) < 500_000
    result = subprocess.run(
        [sys.executable, "-c", code], input=bomb, capture_output=True, check=True, timeout=60
    )
    status, reason, width, height, grown_kib = result.stdout.decode().split()
    assert (status, reason, width, height) == (
        imaging.REJECTED,
        imaging.TOO_LARGE,
        "30000",
        "30000",
    )
    assert int(grown_kib) < 50 * 1024  # KiB on Linux: under 50 MB


def test_pillow_guard_beyond_budget_still_rejects_as_too_large():
    # Twice Pillow's MAX_IMAGE_PIXELS raises inside Image.open; it must still be a verdict.
    options = dataclasses.replace(OPTIONS, max_pixels=10**12)
    assert verdict(bomb_png(), options) == (imaging.REJECTED, imaging.TOO_LARGE)


# ---------------------------------------------------------------------------------------------
# Normalisation: orientation, modes, bit depths.


def cleaned(data: bytes, options: imaging.CleaningOptions = OPTIONS) -> np.ndarray:
    image, info = imaging.clean_image_bytes(data, options)
    assert info.status == imaging.ACCEPTED, info
    assert image.dtype == np.uint8 and image.shape == (options.image_size,) * 2 + (3,)
    return image


def test_exif_orientation_is_applied():
    # Left half red, right half blue, stored with "rotate 90 clockwise to display" (6):
    # displayed, the top is red and the bottom blue, and the displayed size is 100 x 160.
    array = np.zeros((100, 160, 3), dtype=np.uint8)
    array[:, :80] = (255, 0, 0)
    array[:, 80:] = (0, 0, 255)
    image, info = imaging.clean_image_bytes(jpeg_with_orientation(array, 6))
    assert (info.width, info.height, info.orientation) == (100, 160, 6)
    top, bottom = image[20, 128].astype(int), image[235, 128].astype(int)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow_exif_transpose(orientation):
    array = photo(50, 30)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = Image.open(io.BytesIO(encode(array, "PNG", exif=exif.tobytes())))
    expected = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    assert np.array_equal(imaging.orient(array, orientation), expected)


def test_jpeg_is_complete_only_up_to_the_end_marker():
    thumbnail_exif = Image.Exif()
    thumbnail_exif[0x0112] = 1
    plain = encode(photo(200, 150), "JPEG")
    progressive = encode(photo(200, 150), "JPEG", progressive=True, quality=80)
    with_restarts = encode(photo(200, 150), "JPEG", restart_marker_blocks=2)
    for data in (plain, progressive, with_restarts):
        assert imaging.jpeg_is_complete(data)
        assert imaging.jpeg_is_complete(data + b"trailing bytes after the end")
        for cut in (0.3, 0.6, 0.95, 0.999):
            assert not imaging.jpeg_is_complete(data[: int(len(data) * cut)])
        assert not imaging.jpeg_is_complete(data[:-2])


def test_a_png_with_damaged_image_data_is_corrupt():
    data = encode(photo(), "PNG")
    start = data.index(b"IDAT") + 4
    flipped = bytearray(data)
    flipped[start + len(data) // 3] ^= 0x10  # one bit in the compressed pixels
    zero_tail = data[: start + 100] + bytes(len(data) - start - 100)  # a download that stalled
    for damaged in (bytes(flipped), zero_tail):
        assert not imaging.png_is_intact(damaged)
        assert verdict(damaged) == (imaging.REJECTED, imaging.CORRUPT)
    assert imaging.png_is_intact(data) and verdict(data) == (imaging.ACCEPTED, "")


def test_a_thumbnail_end_marker_does_not_hide_a_truncated_photo():
    # An EXIF APP1 segment holding a complete JPEG thumbnail, hence its own FFD9 marker.
    thumbnail = encode(photo(40, 30), "JPEG")
    app1 = b"Exif\x00\x00" + b"II*\x00\x08\x00\x00\x00\x00\x00" + thumbnail
    main = encode(photo(200, 150), "JPEG")
    data = main[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + main[2:]
    assert verdict(data)[0] == imaging.ACCEPTED
    assert verdict(data[: len(data) // 2]) == (imaging.REJECTED, imaging.CORRUPT)


def pillow_header(data: bytes) -> imaging.ImageInfo:
    return imaging._header_info(imaging._open_header(data, "jpeg"), "jpeg")


def with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """The JPEG with one more segment right after its SOI marker."""
    segment = bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + segment + jpeg[2:]


def exif_orientation_as_long(orientation: int) -> bytes:
    entry = struct.pack("<HHII", 0x0112, 4, 1, orientation)  # LONG, where EXIF says SHORT
    return b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00" + entry + b"\x00" * 4


def test_plain_jpeg_header_reads_what_pillow_reads():
    array = photo(160, 100)
    plain = [jpeg_with_orientation(array, orientation) for orientation in range(1, 9)]
    plain += [
        encode(array, "JPEG"),
        encode(array[:, :, 0], "JPEG"),
        encode(array, "JPEG", progressive=True),
        encode(array, "JPEG", restart_marker_blocks=2),
        encode(array, "JPEG", icc_profile=b"profile" * 20, comment=b"a comment"),
        cv2.imencode(".jpg", array)[1].tobytes(),
    ]
    for data in plain:
        header = imaging.plain_jpeg_header(data)
        assert header is not None and header == pillow_header(data)
    assert imaging.plain_jpeg_header(jpeg_with_orientation(array, 6))[2:4] == (100, 160)


def test_unusual_jpegs_take_pillows_parse():
    array = photo(160, 100)
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><tiff:Orientation>6</tiff:Orientation>"
    exif_long = exif_orientation_as_long(6)
    cmyk = io.BytesIO()
    Image.fromarray(array).convert("CMYK").save(cmyk, "JPEG")
    unusual = {
        "cmyk": cmyk.getvalue(),
        "xmp orientation": with_segment(encode(array, "JPEG"), 0xE1, xmp),
        "orientation as LONG": with_segment(encode(array, "JPEG"), 0xE1, exif_long),
        "two EXIF segments": with_segment(jpeg_with_orientation(array, 3), 0xE1, exif_long),
        "junk between segments": encode(array, "JPEG")[:2] + b"junk" + encode(array, "JPEG")[2:],
        "cut in its header": encode(array, "JPEG")[:300],
    }
    for name, data in unusual.items():
        assert imaging.plain_jpeg_header(data) is None, name
    image, info = imaging.clean_image_bytes(unusual["xmp orientation"])
    assert info.orientation == pillow_header(unusual["xmp orientation"]).orientation
    assert (info.width, info.height) == pillow_header(unusual["xmp orientation"])[2:4]


def test_jpeg_header_beyond_pillows_guard_is_too_large():
    jpeg = encode(photo(64, 48), "JPEG")
    frame = jpeg.index(b"\xff\xc0")
    huge = jpeg[: frame + 5] + struct.pack(">HH", 60000, 60000) + jpeg[frame + 9 :]
    assert imaging.plain_jpeg_header(huge)[2:4] == (60000, 60000)
    options = dataclasses.replace(OPTIONS, max_pixels=10**12)
    image, info = imaging.clean_image_bytes(huge, options)
    assert image is None and (info.status, info.reason) == (imaging.REJECTED, imaging.TOO_LARGE)
    assert (info.width, info.height) == (60000, 60000)


def test_opencv_and_pillow_decode_jpegs_alike():
    for data in (encode(photo(200, 150), "JPEG"), encode(photo(200, 150)[:, :, 0], "JPEG")):
        image = cleaned(data)  # OpenCV's path: plain RGB or grayscale JPEG
        picture = Image.open(io.BytesIO(data))
        expected = imaging.resize(imaging.to_rgb(picture), 256)
        assert np.abs(image.astype(int) - expected).mean() < 0.5


def test_progressive_jpeg_is_accepted():
    data = encode(photo(200, 150), "JPEG", progressive=True)
    assert verdict(data) == (imaging.ACCEPTED, "")


def test_grayscale_becomes_three_equal_channels():
    gray = photo()[:, :, 1]
    image = cleaned(encode(gray, "PNG"))
    assert np.array_equal(image[..., 0], image[..., 1])
    assert np.array_equal(image[..., 1], image[..., 2])
    _, info = imaging.clean_image_bytes(encode(gray, "PNG"))
    assert info.mode == "L" and info.grayscale is True
    _, colour_info = imaging.clean_image_bytes(encode(photo(), "PNG"))
    assert colour_info.grayscale is False


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    values = np.tile(np.array([0, 257 * 64, 257 * 128, 65535], dtype=np.uint16), (64, 16))
    data = encode(values, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image = cleaned(data, dataclasses.replace(OPTIONS, image_size=64))
    assert sorted(set(image[0, :, 0].tolist())) == [0, 64, 128, 255]


def test_sixteen_bit_colour_png_keeps_its_colours():
    array = np.zeros((64, 64, 3), dtype=np.uint16)
    array[..., 0] = 65535  # red in BGR order for OpenCV's writer -> blue
    ok, data = cv2.imencode(".png", array)
    assert ok
    image = cleaned(data.tobytes(), dataclasses.replace(OPTIONS, image_size=32))
    assert image[..., 2].min() == 255 and image[..., 0].max() == 0


def test_transparency_is_composited_on_white():
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[:, :32] = (200, 10, 10, 255)  # opaque red on the left, transparent black on the right
    image = cleaned(encode(rgba, "PNG"), dataclasses.replace(OPTIONS, image_size=64))
    assert tuple(image[10, 5]) == (200, 10, 10)
    assert tuple(image[10, 60]) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # pure red in CMYK
    buffer = io.BytesIO()
    cmyk.save(buffer, "JPEG", quality=95)
    image = cleaned(buffer.getvalue(), dataclasses.replace(OPTIONS, image_size=32))
    red, green, blue = image.reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 50 and blue < 50
    _, info = imaging.clean_image_bytes(buffer.getvalue())
    assert info.mode == "CMYK"


def test_palette_gif_and_first_frame_of_an_animation():
    frames = [Image.fromarray(photo(seed=seed)) for seed in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    image, info = imaging.clean_image_bytes(buffer.getvalue())
    assert info.status == imaging.ACCEPTED and info.mode == "P" and info.format == "gif"
    first = imaging.resize(np.asarray(frames[0].convert("RGB")), 256)
    assert np.abs(image.astype(int) - first.astype(int)).mean() < 20


# ---------------------------------------------------------------------------------------------
# Resize policies.


def test_stretch_fills_the_square():
    image = imaging.resize(photo(300, 120), 64, "stretch")
    assert image.shape == (64, 64, 3)
    assert image.reshape(-1, 3).std(axis=0).min() > 10  # real content everywhere, no border


def test_pad_keeps_the_aspect_ratio_with_black_bars():
    white = np.full((100, 200, 3), 255, dtype=np.uint8)
    image = imaging.resize(white, 64, "pad")
    assert image.shape == (64, 64, 3)
    assert image[:16].max() == 0 and image[48:].max() == 0  # bars above and below
    assert image[17:47].min() == 255


def test_crop_keeps_the_centre_square():
    array = np.zeros((100, 300, 3), dtype=np.uint8)
    array[:, 100:200] = 255  # only the centre square is white
    image = imaging.resize(array, 50, "crop")
    assert image.shape == (50, 50, 3) and image.min() == 255


def test_unknown_policy_is_a_value_error():
    with pytest.raises(ValueError, match="resize policy"):
        imaging.resize(photo(), 64, "squash")
    with pytest.raises(ValueError, match="resize policy"):
        imaging.CleaningOptions(resize_policy="squash")


def test_stretch_matches_tensorflow_area_resize():
    # The exported model resizes in-graph with tf.image.resize(method="area"): the training
    # pixels must be what serving computes, when enlarging and when shrinking.
    import tensorflow as tf

    # Mixed sizes (one side grows, the other shrinks) included: OpenCV's one-pass INTER_AREA
    # is 1.1/255 off there. Rounding to uint8 alone accounts for a mean of 0.25.
    for width, height in ((250, 250), (100, 90), (640, 480), (200, 500), (600, 180)):
        array = photo(width, height, seed=width)
        ours = imaging.resize(array, 256, "stretch").astype(np.float32)
        theirs = tf.image.resize(
            array[np.newaxis].astype(np.float32), (256, 256), method=imaging.TF_RESIZE_METHOD
        )[0].numpy()
        difference = np.abs(ours - theirs)
        assert difference.mean() < 0.35 and difference.max() < 1.5, (width, height)


# ---------------------------------------------------------------------------------------------
# Face crop.


def test_face_crop_centres_on_the_face():
    face = drawn_faces.drawn_face(240, canvas=(420, 700))  # face centred at x=390, y=210
    box = imaging.find_largest_face(face)
    assert box is not None
    x, y, width, height = box
    assert abs((x + width / 2) - 390) < 25 and abs((y + height / 2) - 210) < 40
    options = dataclasses.replace(OPTIONS, face_crop=True, image_size=64)
    image, info = imaging.clean_image_bytes(encode(face, "PNG"), options)
    assert info.status == imaging.ACCEPTED and info.face is True

    def background_share(array):
        return float(np.all(array == 90, axis=-1).mean())

    # The face fills much more of the crop than of the whole picture, in its middle, with
    # background (the margin) on both sides.
    assert background_share(image) < background_share(imaging.resize(face, 64)) - 0.1
    assert np.abs(image[32, 32].astype(int) - (205, 170, 140)).max() < 10
    assert background_share(image[:, :4]) > 0.9 and background_share(image[:, -4:]) > 0.9


def test_images_without_a_face_are_kept_or_rejected_by_option():
    data = encode(photo(160, 120), "PNG")
    kept = dataclasses.replace(OPTIONS, face_crop=True)
    image, info = imaging.clean_image_bytes(data, kept)
    assert info.status == imaging.ACCEPTED and info.face is False
    assert np.array_equal(image, imaging.resize(photo(160, 120), 256))
    rejected = dataclasses.replace(kept, keep_images_without_face=False)
    assert verdict(data, rejected) == (imaging.REJECTED, imaging.NO_FACE)


def test_crop_around_stays_inside_the_image():
    image = photo(200, 100)
    crop = imaging.crop_around(image, (170, 60, 40, 40), margin=0.5)
    assert crop.shape == (80, 80, 3)
    assert np.array_equal(crop, image[20:100, 120:200])


# ---------------------------------------------------------------------------------------------
# Options and thumbnails.


def test_options_from_any_config_with_the_fields():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Outer(imaging.CleaningOptions):
        workdir: str

    outer = Outer(workdir="w", resize_policy="pad", min_side=8)
    assert imaging.options_from(outer) == imaging.CleaningOptions(resize_policy="pad", min_side=8)


@pytest.mark.parametrize(
    "changes", [{"max_aspect_ratio": 0.5}, {"image_size": 0}, {"face_margin": -1.0}]
)
def test_bad_options_are_value_errors(changes):
    with pytest.raises(ValueError):
        imaging.CleaningOptions(**changes)


def test_thumbnail_shows_what_it_can_and_never_raises():
    assert imaging.thumbnail(encode(photo(20, 60), "PNG"), 32).shape == (32, 32, 3)
    for data in (b"", b"text", bomb_png(), encode(photo(), "JPEG")[:200]):
        assert imaging.thumbnail(data, 32) is None
