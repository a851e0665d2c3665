"""Procedural happy and sad faces drawn with OpenCV: the offline, deterministic default dataset.

Every image comes from one integer seed. The seed decides everything that must not give the
label away (skin, face shape, pose, hair, glasses, background, lighting, camera artefacts); the
label decides only the expression: the mouth's curvature (a smile or a frown, open or closed)
and the brows (a sad face raises their inner ends). So `render_face(s, "happy")` and
`render_face(s, "sad")` are the same person making two faces, and a classifier has to look at
the expression to tell them apart.
"""

import dataclasses
import math

import apache_beam as beam
import cv2
import numpy as np

from pipeline import contract
from pipeline.data import schema

IMAGE_SIZE = contract.IMAGE_SIZE

# Skin tones from very light to very dark (RGB), roughly spanning the Fitzpatrick scale.
SKIN_TONES = (
    (255, 224, 196),
    (241, 194, 161),
    (224, 172, 130),
    (198, 144, 104),
    (170, 114, 78),
    (141, 85, 56),
    (105, 63, 42),
    (84, 54, 38),
)
HAIR_COLOURS = (
    (20, 17, 15),
    (45, 30, 22),
    (82, 54, 34),
    (124, 84, 48),
    (176, 134, 82),
    (222, 190, 130),
    (150, 60, 30),
    (160, 160, 160),
    (230, 230, 230),
)
IRIS_COLOURS = ((70, 45, 25), (110, 70, 40), (60, 90, 130), (80, 110, 70), (120, 100, 60))
FRAME_COLOURS = ((15, 15, 15), (70, 40, 20), (150, 150, 160), (120, 20, 30), (30, 40, 90))

# Fixed-point precision of OpenCV's drawing calls: coordinates are in 1/16 pixel.
_SHIFT = 4
_ONE = 1 << _SHIFT


@dataclasses.dataclass(frozen=True)
class Expression:
    """What the label changes: how the mouth curves and where the brows' inner ends sit.

    Distances are in units of the face's half-width. `mouth_curve` > 0 lifts the mouth's
    corners (a smile), < 0 drops them (a frown); `brow_raise` > 0 lifts the inner brow ends.
    """

    mouth_curve: float
    mouth_open: float
    brow_raise: float


def sample_expression(rng: np.random.Generator, label: str) -> Expression:
    """Draws an expression for `label` with the same random draws for either label.

    The magnitudes come from `rng` whatever the label, so the rest of the face (drawn from
    the same generator afterwards) does not depend on it.
    """
    sign = 1.0 if contract.label_id(label) == 1 else -1.0
    curve = rng.uniform(0.14, 0.28)
    opening = rng.uniform(0.06, 0.16) if rng.random() < 0.3 else 0.0
    raise_amount = rng.uniform(0.08, 0.16)
    happy_brow = rng.uniform(-0.04, 0.0)
    return Expression(
        mouth_curve=sign * curve,
        mouth_open=opening,
        brow_raise=raise_amount if sign < 0 else happy_brow,
    )


class _Canvas:
    """An RGB image plus the similarity transform from face units to pixels.

    Face units: the origin is the face's centre, x to the right, y down, and 1 is the face's
    half-width, so the drawing code reads like a proportions chart.
    """

    def __init__(self, image: np.ndarray, centre, scale: float, angle: float):
        self.image = image
        self.centre = np.asarray(centre, dtype=np.float64)
        self.scale = scale
        cos, sin = math.cos(angle), math.sin(angle)
        self.rotation = np.array([[cos, -sin], [sin, cos]]) * scale

    def pixels(self, points) -> np.ndarray:
        """Face-unit points (N, 2) to fixed-point pixel coordinates for OpenCV."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        pixel_points = points @ self.rotation.T + self.centre
        return np.round(pixel_points * _ONE).astype(np.int32)

    def fill(self, points, colour) -> None:
        cv2.fillPoly(self.image, [self.pixels(points)], _colour(colour), cv2.LINE_AA, _SHIFT)

    def line(self, points, colour, width: float, closed: bool = False) -> None:
        thickness = max(1, int(round(width * self.scale)))
        cv2.polylines(
            self.image,
            [self.pixels(points)],
            closed,
            _colour(colour),
            thickness,
            cv2.LINE_AA,
            _SHIFT,
        )


def _colour(colour) -> tuple[int, int, int]:
    return tuple(int(np.clip(channel, 0, 255)) for channel in colour)


def _shade(colour, factor: float) -> np.ndarray:
    return np.clip(np.asarray(colour, dtype=np.float64) * factor, 0, 255)


def _mix(first, second, weight: float) -> np.ndarray:
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    return first * (1 - weight) + second * weight


def _ellipse(centre, half_width: float, half_height: float, angle: float = 0.0, count: int = 48):
    """Points on an ellipse in face units."""
    t = np.linspace(0, 2 * np.pi, count, endpoint=False)
    x, y = half_width * np.cos(t), half_height * np.sin(t)
    cos, sin = math.cos(angle), math.sin(angle)
    return np.stack([centre[0] + x * cos - y * sin, centre[1] + x * sin + y * cos], axis=1)


def _curve(left, right, sag: float, count: int = 24) -> np.ndarray:
    """A parabola from `left` to `right` whose middle sits `sag` lower (y grows downwards)."""
    t = np.linspace(0.0, 1.0, count)
    x = left[0] + (right[0] - left[0]) * t
    y = left[1] + (right[1] - left[1]) * t + sag * 4 * t * (1 - t)
    return np.stack([x, y], axis=1)


# --------------------------------------------------------------------------------------------
# Backgrounds


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    first, second = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    angle = rng.uniform(0, 2 * np.pi)
    grid = np.linspace(-1, 1, size)
    x, y = np.meshgrid(grid, grid)
    weight = np.clip((x * math.cos(angle) + y * math.sin(angle)) * 0.5 + 0.5, 0, 1)[..., None]
    return first * (1 - weight) + second * weight


def _blotches(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour noise, like an out-of-focus room."""
    cells = int(rng.integers(3, 8))
    small = rng.uniform(20, 235, (cells, cells, 3))
    small = _mix(small, small.mean(axis=2, keepdims=True), rng.uniform(0.2, 0.7))
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def _clutter(rng: np.random.Generator, image: np.ndarray, size: int) -> None:
    """Random shapes: boxes, discs, poles and arcs of either curvature, so no shape is a cue."""
    for _ in range(int(rng.integers(6, 24))):
        colour = _colour(rng.uniform(0, 255, 3))
        kind = rng.integers(4)
        x, y = rng.uniform(-0.1, 1.1, 2) * size
        extent = rng.uniform(0.03, 0.35) * size
        if kind == 0:
            corner = (int(x + rng.uniform(-1, 1) * extent), int(y + rng.uniform(-1, 1) * extent))
            cv2.rectangle(image, (int(x), int(y)), corner, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.circle(image, (int(x), int(y)), int(extent / 2), colour, -1, cv2.LINE_AA)
        elif kind == 2:
            end = (int(x + rng.uniform(-1, 1) * extent), int(y + rng.uniform(-1, 1) * extent))
            cv2.line(image, (int(x), int(y)), end, colour, int(rng.integers(1, 8)), cv2.LINE_AA)
        else:
            axes = (int(extent / 2), int(extent / 2 * rng.uniform(0.3, 1)))
            start = rng.uniform(0, 360)
            cv2.ellipse(
                image,
                (int(x), int(y)),
                axes,
                rng.uniform(0, 360),
                start,
                start + rng.uniform(60, 200),
                colour,
                int(rng.integers(1, 6)),
                cv2.LINE_AA,
            )


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(3)
    image = _gradient(rng, size) if kind != 1 else _blotches(rng, size)
    image = np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))
    if kind == 2 or rng.random() < 0.3:
        _clutter(rng, image, size)
        sigma = rng.uniform(0.5, 3.0)
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    return image


# --------------------------------------------------------------------------------------------
# The person


@dataclasses.dataclass(frozen=True)
class _Look:
    """Everything about a face that does not depend on the label."""

    skin: np.ndarray
    face_height: float  # half-height over half-width
    roundness: float  # superellipse exponent: 2 is an oval, higher is squarer
    jaw_taper: float
    eye_y: float
    eye_gap: float
    eye_width: float
    eye_open: float
    iris: tuple
    brow_thickness: float
    brow_colour: np.ndarray
    nose_length: float
    mouth_y: float
    mouth_width: float
    lip_colour: np.ndarray
    hair: str  # "none", "short", "long", "bun"
    hair_colour: tuple
    glasses: bool
    frame_colour: tuple
    clothes: np.ndarray
    blush: float


def _sample_look(rng: np.random.Generator) -> _Look:
    skin = _mix(SKIN_TONES[rng.integers(len(SKIN_TONES))], rng.uniform(60, 255, 3), 0.08)
    face_height = rng.uniform(1.22, 1.45)
    hair_colour = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]
    return _Look(
        skin=skin,
        face_height=face_height,
        roundness=rng.uniform(2.0, 3.2),
        jaw_taper=rng.uniform(0.15, 0.45),
        eye_y=rng.uniform(-0.22, -0.08) * face_height,
        eye_gap=rng.uniform(0.34, 0.44),
        eye_width=rng.uniform(0.15, 0.2),
        eye_open=rng.uniform(0.35, 0.6) if rng.random() > 0.05 else 0.08,
        iris=IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))],
        brow_thickness=rng.uniform(0.055, 0.1),
        brow_colour=_shade(hair_colour, rng.uniform(0.6, 1.0)),
        nose_length=rng.uniform(0.3, 0.42),
        mouth_y=rng.uniform(0.52, 0.62) * face_height,
        mouth_width=rng.uniform(0.34, 0.46),
        lip_colour=_mix(skin, (175, 60, 70), rng.uniform(0.45, 0.75)),
        hair=("none", "short", "long", "bun")[rng.choice(4, p=(0.2, 0.4, 0.3, 0.1))],
        hair_colour=hair_colour,
        glasses=bool(rng.random() < 0.22),
        frame_colour=FRAME_COLOURS[rng.integers(len(FRAME_COLOURS))],
        clothes=rng.uniform(10, 245, 3),
        blush=rng.uniform(0.0, 0.35),
    )


def _face_outline(look: _Look, count: int = 72) -> np.ndarray:
    """A superellipse whose lower half narrows towards the chin."""
    t = np.linspace(0, 2 * np.pi, count, endpoint=False)
    power = 2.0 / look.roundness
    x = np.sign(np.cos(t)) * np.abs(np.cos(t)) ** power
    y = np.sign(np.sin(t)) * np.abs(np.sin(t)) ** power
    taper = 1 - look.jaw_taper * np.clip(y, 0, 1) ** 2
    return np.stack([x * taper, y * look.face_height], axis=1)


def _draw_body(canvas: _Canvas, look: _Look) -> None:
    h = look.face_height
    neck = [(-0.42, 0.5 * h), (0.42, 0.5 * h), (0.48, h + 0.9), (-0.48, h + 0.9)]
    canvas.fill(neck, _shade(look.skin, 0.8))
    shoulders = _curve((-2.6, h + 1.6), (2.6, h + 1.6), -0.9)
    canvas.fill(np.concatenate([shoulders, [(2.8, h + 4), (-2.8, h + 4)]]), look.clothes)
    collar = _curve((-0.55, h + 0.75), (0.55, h + 0.75), 0.35)
    canvas.line(collar, _shade(look.clothes, 0.6), 0.06)


def _draw_hair_back(canvas: _Canvas, look: _Look) -> None:
    h = look.face_height
    if look.hair == "long":
        canvas.fill(_ellipse((0, -0.1 * h), 1.2, 1.02 * h), look.hair_colour)
        sides = [(-1.2, -0.1 * h), (1.2, -0.1 * h), (1.3, h + 0.7), (-1.3, h + 0.7)]
        canvas.fill(sides, look.hair_colour)
    elif look.hair == "bun":
        canvas.fill(_ellipse((0, -1.12 * h), 0.45, 0.35), look.hair_colour)


def _draw_ears(canvas: _Canvas, look: _Look) -> None:
    for side in (-1, 1):
        ear = _ellipse((side * 0.97, look.eye_y + 0.15), 0.16, 0.27)
        canvas.fill(ear, _shade(look.skin, 0.9))
        canvas.line(
            _ellipse((side * 0.99, look.eye_y + 0.15), 0.08, 0.17), _shade(look.skin, 0.75), 0.03
        )


def _draw_head(canvas: _Canvas, look: _Look) -> None:
    outline = _face_outline(look)
    canvas.fill(outline, look.skin)
    # A darker rim and a lighter centre give the flat disc some volume.
    canvas.line(outline, _shade(look.skin, 0.88), 0.1, closed=True)
    if look.blush > 0.05:
        blush_colour = _mix(look.skin, (220, 110, 110), look.blush)
        for side in (-1, 1):
            canvas.fill(_ellipse((side * 0.5, look.eye_y + 0.45), 0.17, 0.11), blush_colour)


def _draw_hair_front(canvas: _Canvas, look: _Look, rng: np.random.Generator) -> None:
    if look.hair == "none":
        return
    h = look.face_height
    top = _ellipse((0, -0.05 * h), 1.08, 1.02 * h, count=64)
    cap = top[top[:, 1] < -0.45 * h]
    parting = rng.uniform(-0.4, 0.4)
    fringe = _curve((1.05, -0.45 * h), (-1.05, -0.45 * h), rng.uniform(-0.25, 0.1))
    fringe[:, 1] += 0.12 * np.sin((fringe[:, 0] - parting) * 3)
    cap = cap[np.argsort(np.arctan2(cap[:, 1], cap[:, 0]))]
    canvas.fill(np.concatenate([fringe, cap[::-1]]), look.hair_colour)
    if look.hair == "long":
        for side in (-1, 1):
            canvas.fill(
                [
                    (side * 1.08, -0.45 * h),
                    (side * 0.9, -0.45 * h),
                    (side * 0.98, 0.3 * h),
                    (side * 1.2, 0.5 * h),
                ],
                look.hair_colour,
            )


def _draw_eyes(canvas: _Canvas, look: _Look, rng: np.random.Generator) -> None:
    gaze = rng.uniform(-0.3, 0.3, 2) * look.eye_width
    for side in (-1, 1):
        centre = np.array([side * look.eye_gap, look.eye_y])
        half = look.eye_width
        lid = half * look.eye_open
        left, right = centre - (half, 0), centre + (half, 0)
        upper = _curve(left, right, -2 * lid)
        lower = _curve(right, left, 1.2 * lid)
        almond = np.concatenate([upper, lower])
        canvas.fill(almond, (240, 236, 228))
        iris_radius = half * 0.5
        canvas.fill(_ellipse(centre + gaze, iris_radius, iris_radius, count=32), look.iris)
        canvas.fill(
            _ellipse(centre + gaze, iris_radius * 0.45, iris_radius * 0.45, count=24), (15, 12, 10)
        )
        highlight = centre + gaze + (-0.3 * iris_radius, -0.35 * iris_radius)
        canvas.fill(
            _ellipse(highlight, 0.12 * iris_radius, 0.12 * iris_radius, count=12), (250, 250, 250)
        )
        # Skin-coloured lids hide the iris outside the almond.
        above = np.concatenate([upper, [right + (0.05, -lid * 2.5), left + (-0.05, -lid * 2.5)]])
        below = np.concatenate([lower, [left + (-0.05, lid * 2.2), right + (0.05, lid * 2.2)]])
        canvas.fill(above, look.skin)
        canvas.fill(below, look.skin)
        canvas.line(upper, (35, 25, 20), 0.035)
        canvas.line(_curve(left, right, -2.6 * lid), _shade(look.skin, 0.78), 0.02)


def _draw_brows(canvas: _Canvas, look: _Look, expression: Expression) -> None:
    base = look.eye_y - look.eye_width * look.eye_open - 0.16
    for side in (-1, 1):
        inner = (side * (look.eye_gap - look.eye_width * 0.95), base - expression.brow_raise)
        outer = (side * (look.eye_gap + look.eye_width * 1.15), base + 0.03)
        arch = -0.05 if expression.brow_raise < 0.03 else 0.0
        points = _curve(inner, outer, arch)
        canvas.line(points, look.brow_colour, look.brow_thickness)


def _draw_nose(canvas: _Canvas, look: _Look) -> None:
    tip_y = look.eye_y + look.nose_length
    shadow = _shade(look.skin, 0.72)
    canvas.line([(0.06, look.eye_y + 0.08), (0.1, tip_y - 0.05)], _shade(look.skin, 0.85), 0.035)
    canvas.line(_curve((-0.14, tip_y - 0.02), (0.14, tip_y - 0.02), 0.06), shadow, 0.04)
    for side in (-1, 1):
        canvas.fill(_ellipse((side * 0.07, tip_y), 0.035, 0.02), _shade(look.skin, 0.5))


def _draw_mouth(canvas: _Canvas, look: _Look, expression: Expression) -> None:
    """A smile curves the mouth up at the corners, a frown down; either may be open.

    A curve's sag is how far its middle sits below its ends (y grows downwards), so a smile
    has a positive sag and a frown a negative one.
    """
    curve, opening = expression.mouth_curve, expression.mouth_open
    left = np.array([-look.mouth_width, look.mouth_y - curve / 2])
    right = np.array([look.mouth_width, look.mouth_y - curve / 2])
    if opening <= 0:
        top = _curve(left, right, curve - 0.08)
        bottom = _curve(right, left, curve + 0.1)
        canvas.fill(np.concatenate([top, bottom]), look.lip_colour)
        canvas.line(_curve(left, right, curve), (40, 14, 18), 0.06)
        return
    if curve > 0:  # a grin opens downwards and shows the upper teeth
        top_sag, bottom_sag = curve * 0.5, curve + 1.6 * opening
        teeth = [_curve(left, right, top_sag), _curve(right, left, top_sag + 0.5 * opening)]
    else:  # a wail opens upwards and shows the lower teeth
        top_sag, bottom_sag = curve - 1.6 * opening, curve * 0.5
        teeth = [_curve(left, right, bottom_sag - 0.5 * opening), _curve(right, left, bottom_sag)]
    opening_outline = np.concatenate(
        [_curve(left, right, top_sag), _curve(right, left, bottom_sag)]
    )
    canvas.fill(opening_outline, (60, 20, 25))
    canvas.fill(np.concatenate(teeth), (235, 230, 215))
    canvas.line(opening_outline, look.lip_colour, 0.07, closed=True)


def _draw_glasses(canvas: _Canvas, look: _Look) -> None:
    if not look.glasses:
        return
    radius = look.eye_width * 1.45
    for side in (-1, 1):
        centre = (side * look.eye_gap, look.eye_y)
        canvas.line(_ellipse(centre, radius, radius * 0.8), look.frame_colour, 0.04, closed=True)
        canvas.line(
            [(side * (look.eye_gap + radius), look.eye_y), (side * 0.98, look.eye_y - 0.05)],
            look.frame_colour,
            0.04,
        )
    bridge = _curve(
        (-look.eye_gap + radius, look.eye_y), (look.eye_gap - radius, look.eye_y), -0.05
    )
    canvas.line(bridge, look.frame_colour, 0.04)


# --------------------------------------------------------------------------------------------
# Camera


def _light(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Directional light, exposure and white balance."""
    size = image.shape[0]
    angle = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(0.0, 0.35)
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    x, y = np.meshgrid(grid, grid)
    field = 1 + strength * (x * math.cos(angle) + y * math.sin(angle)) / 1.5
    gain = rng.uniform(0.8, 1.2) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    lit = image.astype(np.float32) * field[..., None] * gain
    return lit


def _degrade(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.6))
    noise = rng.uniform(0, 8)
    image = image + rng.normal(0, noise, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def render_face(seed: int, label: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draws one face: an RGB uint8 array of shape (size, size, 3).

    The same `seed` and `label` always give the same pixels; the same `seed` with the other
    label gives the same person with the other expression.

    Raises:
      ValueError: if `label` is not 'sad' or 'happy', or `size` is too small to draw on.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    rng = np.random.default_rng(seed)
    expression = sample_expression(rng, label)
    look = _sample_look(rng)
    image = _background(rng, size)
    scale = size * rng.uniform(0.2, 0.245)
    centre = size * (0.5 + rng.uniform(-0.04, 0.04, 2))
    centre[1] -= scale * 0.1
    angle = math.radians(rng.uniform(-10, 10))
    canvas = _Canvas(image, centre, scale, angle)
    _draw_hair_back(canvas, look)
    _draw_body(canvas, look)
    _draw_ears(canvas, look)
    _draw_head(canvas, look)
    _draw_eyes(canvas, look, rng)
    _draw_brows(canvas, look, expression)
    _draw_nose(canvas, look)
    _draw_mouth(canvas, look, expression)
    _draw_hair_front(canvas, look, rng)
    _draw_glasses(canvas, look)
    return _degrade(rng, _light(rng, canvas.image))


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """RGB uint8 pixels to JPEG bytes."""
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError("OpenCV could not encode the image as JPEG")
    return encoded.tobytes()


def image_seed(seed: int, index: int) -> int:
    """The seed of the `index`-th image of a dataset made with `seed` (stable across versions)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def render_source_image(index: int, seed: int, size: int = IMAGE_SIZE) -> schema.SourceImage:
    """The `index`-th image of a synthetic dataset as JPEG bytes (even indices sad, odd happy)."""
    label = contract.LABELS[index % 2]
    face_seed = image_seed(seed, index)
    image = render_face(face_seed, label, size)
    quality = int(np.random.default_rng([face_seed, 1]).integers(40, 96))
    return schema.SourceImage(
        path=f"synthetic/{label}/{index:05d}.jpg", label=label, data=encode_jpeg(image, quality)
    )


class RenderSyntheticFaces(beam.PTransform):
    """Makes `num_images` faces, half sad and half happy, as SourceImages with JPEG bytes.

    Deterministic for a given `seed`: the i-th image is always the same, so growing
    `num_images` keeps every earlier image (and its content-hash split).
    """

    def __init__(self, num_images: int, seed: int = 0, size: int = IMAGE_SIZE):
        super().__init__()
        if num_images < 2:
            raise ValueError(f"num_images must be at least 2 (one per class), got {num_images}")
        self.num_images = num_images
        self.seed = seed
        self.size = size

    def expand(self, pbegin):
        return (
            pbegin
            | "Indices" >> beam.Create(range(self.num_images))
            | "Render" >> beam.Map(render_source_image, seed=self.seed, size=self.size)
        )
