"""Procedural text-to-video data: flat shapes that move, bounce, grow or turn, with the prompt that describes them.

Every clip is drawn from a `ClipSpec`: one shape kind (circle, square, triangle), one colour, a count of one to
three objects, one motion and a flat background, e.g. "two blue squares bouncing on a black background".
The spec is the ground truth, so a generated clip can be scored against its prompt (`score_clip`).

Time and space are continuous: a clip spans the normalised time tau in [0, 1] and the unit square, and
`render_clip` samples it at any frame count and resolution. A short, small clip is therefore a subsampled
version of the long, large one, which is what lets a model be trained at a small grid and used at a larger one.

Motions (positions in canvas units, tau in [0, 1]):

    moving <dir>  straight line, TRAVEL canvas units over the clip, all objects in the same direction
    bouncing      constant velocity of BOUNCE_SPEED canvas units per clip, reflected at the canvas borders
    growing       radius grows linearly by the factor GROWTH, position fixed
    turning       rotation by TURN_ANGLE radians, position fixed (squares and triangles only: a turning
                  circle would be a still image)

Shapes are drawn with a one-pixel anti-aliased edge from their signed distance functions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 210, 40),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[float, float]] = {  # (dx, dy) in image coordinates: y grows downwards
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
MOTIONS = tuple(f"moving {d}" for d in DIRECTIONS) + ("bouncing", "growing", "turning")
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
MAX_COUNT = max(COUNT_WORDS)

TRAVEL = 0.45
BOUNCE_SPEED = 1.2
GROWTH = 1.9
TURN_ANGLE = 0.75 * math.pi
RADIUS_RANGE = (0.085, 0.12)  # object radius in canvas units (growing objects start at 0.6 x this)


@dataclass(frozen=True)
class ShapeObject:
    """One object: start centre (x, y), radius, rotation angle and velocity, in canvas units per clip."""

    x: float
    y: float
    radius: float
    angle: float
    vx: float = 0.0
    vy: float = 0.0


@dataclass(frozen=True)
class ClipSpec:
    """The ground truth of one clip: what the prompt says plus where each object starts."""

    shape: str
    colour: str
    motion: str
    background: str
    objects: tuple[ShapeObject, ...]

    @property
    def count(self) -> int:
        return len(self.objects)

    @property
    def prompt(self) -> str:
        noun = self.shape + ("s" if self.count > 1 else "")
        return f"{COUNT_WORDS[self.count]} {self.colour} {noun} {self.motion} on a {self.background} background"


@dataclass(frozen=True)
class PromptFacts:
    """What a prompt asks for, parsed back from its text."""

    count: int
    colour: str
    shape: str
    motion: str
    background: str


_PROMPT_RE = re.compile(
    r"^(?P<count>a|two|three) (?P<colour>\w+) (?P<shape>circle|square|triangle)s? (?P<motion>.+?)"
    r" on a (?P<background>\w+) background$"
)


def parse_prompt(prompt: str) -> PromptFacts:
    """Inverse of `ClipSpec.prompt`; raises ValueError for text the generator never writes."""
    match = _PROMPT_RE.match(prompt.strip().lower())
    if match is None:
        raise ValueError(f"prompt {prompt!r} is not of the form '<a|two|three> <colour> <shape>[s] <motion> on a "
                         f"<background> background'")
    facts = match.groupdict()
    count = {w: n for n, w in COUNT_WORDS.items()}[facts["count"]]
    for key, allowed in (("colour", COLOURS), ("motion", MOTIONS), ("background", BACKGROUNDS)):
        if facts[key] not in allowed:
            raise ValueError(f"prompt {prompt!r}: {key} {facts[key]!r} is not one of {sorted(allowed)}")
    return PromptFacts(count, facts["colour"], facts["shape"], facts["motion"], facts["background"])


def prompt_vocabulary() -> list[str]:
    """Every word the generator can write, sorted (the text encoder's vocabulary)."""
    words = {"on", "a", "background", *COUNT_WORDS.values(), *COLOURS, *BACKGROUNDS}
    words |= {w for s in SHAPES for w in (s, s + "s")}
    words |= {w for m in MOTIONS for w in m.split()}
    return sorted(words)


def _lanes(count: int, rng: np.random.Generator) -> list[float]:
    """`count` well separated coordinates in [0.2, 0.8], jittered, in random order."""
    centres = np.linspace(0.5, 0.5, 1) if count == 1 else np.linspace(0.22, 0.78, count)
    jitter = 0.12 if count == 1 else 0.04
    values = centres + rng.uniform(-jitter, jitter, size=count)
    return list(rng.permutation(values))


def _place_objects(motion: str, count: int, rng: np.random.Generator) -> tuple[ShapeObject, ...]:
    radii = rng.uniform(*RADIUS_RANGE, size=count)
    angles = rng.uniform(0.0, 2.0 * math.pi, size=count)
    if motion.startswith("moving "):
        dx, dy = DIRECTIONS[motion.split()[1]]
        along = rng.uniform(0.5 - TRAVEL / 2 - 0.05, 0.5 - TRAVEL / 2 + 0.05, size=count)
        objects = []
        for lane, start, r, a in zip(_lanes(count, rng), along, radii, angles):
            # start on the side opposite to the direction of travel
            x, y = (1.0 - start if dx < 0 else start, lane) if dx != 0 else (lane, 1.0 - start if dy < 0 else start)
            objects.append(ShapeObject(x, y, r, a, dx * TRAVEL, dy * TRAVEL))
        return tuple(objects)
    if motion == "bouncing":
        cells = rng.permutation(9)[:count]
        objects = []
        for cell, r, a in zip(cells, radii, angles):
            theta = rng.uniform(0.0, 2.0 * math.pi)
            x = 0.2 + 0.3 * (cell % 3) + rng.uniform(-0.05, 0.05)
            y = 0.2 + 0.3 * (cell // 3) + rng.uniform(-0.05, 0.05)
            objects.append(ShapeObject(x, y, r, a, BOUNCE_SPEED * math.cos(theta), BOUNCE_SPEED * math.sin(theta)))
        return tuple(objects)
    # growing and turning stay in place: one object near the centre, several on separate cells of a 2 x 2 grid
    if count == 1:
        centres = [(0.5 + rng.uniform(-0.1, 0.1), 0.5 + rng.uniform(-0.1, 0.1))]
    else:
        cells = rng.permutation(4)[:count]
        centres = [(0.28 + 0.44 * (c % 2) + rng.uniform(-0.03, 0.03), 0.28 + 0.44 * (c // 2) + rng.uniform(-0.03, 0.03))
                   for c in cells]
    scale = 0.6 if motion == "growing" else 1.0
    return tuple(ShapeObject(x, y, scale * r, a) for (x, y), r, a in zip(centres, radii, angles))


def sample_clip_spec(rng: np.random.Generator, *, shape: str | None = None, colour: str | None = None,
                     motion: str | None = None, background: str | None = None, count: int | None = None) -> ClipSpec:
    """Draw one clip's ground truth uniformly over count, colour, shape, motion and background; a field given
    as an argument is fixed instead of drawn (with no argument given, the draws depend on `rng` only)."""
    for name, value, allowed in (("shape", shape, SHAPES), ("colour", colour, COLOURS), ("motion", motion, MOTIONS),
                                 ("background", background, BACKGROUNDS), ("count", count, COUNT_WORDS)):
        if value is not None and value not in allowed:
            raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}")
    if motion == "turning" and shape == "circle":
        raise ValueError("a turning circle would be a still image: use a square or a triangle")
    motion = MOTIONS[rng.integers(len(MOTIONS))] if motion is None else motion
    shapes = SHAPES[1:] if motion == "turning" else SHAPES
    shape = shapes[rng.integers(len(shapes))] if shape is None else shape
    colour = list(COLOURS)[rng.integers(len(COLOURS))] if colour is None else colour
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))] if background is None else background
    count = int(rng.integers(1, MAX_COUNT + 1)) if count is None else count
    return ClipSpec(shape, colour, motion, background, _place_objects(motion, count, rng))


def _reflect(position: np.ndarray, low: float, high: float) -> np.ndarray:
    """Fold an unconstrained straight-line position into [low, high] as a ball reflected at both ends."""
    span = high - low
    phase = np.mod(position - low, 2.0 * span)
    return low + np.where(phase > span, 2.0 * span - phase, phase)


def object_states(spec: ClipSpec, tau: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per object, its (x, y, radius, angle) at the normalised times `tau` (each an array shaped like tau)."""
    states = []
    for obj in spec.objects:
        x, y = obj.x + obj.vx * tau, obj.y + obj.vy * tau
        radius = np.full_like(tau, obj.radius)
        angle = np.full_like(tau, obj.angle)
        if spec.motion == "bouncing":
            x, y = _reflect(x, obj.radius, 1.0 - obj.radius), _reflect(y, obj.radius, 1.0 - obj.radius)
        elif spec.motion == "growing":
            radius = obj.radius * (1.0 + (GROWTH - 1.0) * tau)
        elif spec.motion == "turning":
            angle = obj.angle + TURN_ANGLE * tau
        states.append((x, y, radius, angle))
    return states


def _circle_sdf(px: np.ndarray, py: np.ndarray, radius: float, angle: float) -> np.ndarray:
    return np.hypot(px, py) - radius


def _square_sdf(px: np.ndarray, py: np.ndarray, radius: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    qx, qy = c * px + s * py, -s * px + c * py
    return np.maximum(np.abs(qx), np.abs(qy)) - 0.85 * radius  # half side 0.85 r: about a circle's area


def _triangle_sdf(px: np.ndarray, py: np.ndarray, radius: float, angle: float) -> np.ndarray:
    circumradius = 1.25 * radius
    normals = [angle + math.pi / 2 + k * 2.0 * math.pi / 3 for k in range(3)]
    return np.max([math.cos(n) * px + math.sin(n) * py for n in normals], axis=0) - circumradius / 2


SHAPE_SDFS: dict[str, Callable[[np.ndarray, np.ndarray, float, float], np.ndarray]] = {
    "circle": _circle_sdf,
    "square": _square_sdf,
    "triangle": _triangle_sdf,
}


def render_clip(spec: ClipSpec, *, frames: int, height: int, width: int) -> np.ndarray:
    """The clip as uint8 [frames, height, width, 3]: frame i shows time tau = i / (frames - 1)."""
    for name, value, low in (("frames", frames, 2), ("height", height, 8), ("width", width, 8)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    scale = float(min(height, width))  # canvas units -> pixels, for the anti-aliased edge
    ys = (np.arange(height, dtype=np.float64) + 0.5) / height
    xs = (np.arange(width, dtype=np.float64) + 0.5) / width
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    tau = np.linspace(0.0, 1.0, frames)
    video = np.empty((frames, height, width, 3), dtype=np.float64)
    video[:] = np.asarray(BACKGROUNDS[spec.background], dtype=np.float64)
    colour = np.asarray(COLOURS[spec.colour], dtype=np.float64)
    sdf = SHAPE_SDFS[spec.shape]
    for x, y, radius, angle in object_states(spec, tau):
        for i in range(frames):
            alpha = np.clip(0.5 - scale * sdf(gx - x[i], gy - y[i], radius[i], angle[i]), 0.0, 1.0)[..., None]
            video[i] = (1.0 - alpha) * video[i] + alpha * colour
    return np.round(video).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- scoring

COLOUR_TOLERANCE = 0.22  # max RGB distance (in [0, 1] units) for a pixel to count as a palette colour
MIN_OBJECT_AREA = 0.25 * math.pi * (0.6 * RADIUS_RANGE[0]) ** 2  # canvas units: a quarter of the smallest object
MIN_TRAVEL = 0.15  # canvas units a "moving" clip's centroid must cover in the right direction


def colour_masks(video: np.ndarray) -> dict[str, np.ndarray]:
    """Per object colour, bool [F, H, W]: pixels nearest to that palette colour (among colours and
    backgrounds) and within COLOUR_TOLERANCE of it. `video` is uint8 or float in [0, 1], [F, H, W, 3]."""
    pixels = video.astype(np.float64) / 255.0 if video.dtype == np.uint8 else video.astype(np.float64)
    names = list(COLOURS) + list(BACKGROUNDS)
    palette = np.asarray([COLOURS.get(n, BACKGROUNDS.get(n)) for n in names], dtype=np.float64) / 255.0
    distance = np.linalg.norm(pixels[..., None, :] - palette, axis=-1)  # [F, H, W, P]
    nearest = distance.argmin(-1)
    close = distance.min(-1) < COLOUR_TOLERANCE
    return {name: (nearest == k) & close for k, name in enumerate(names) if name in COLOURS}


def _count_blobs(mask: np.ndarray, min_pixels: float) -> int:
    labels, n = ndimage.label(mask)
    if n == 0:
        return 0
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return int((sizes >= min_pixels).sum())


def _centroids(mask: np.ndarray) -> np.ndarray:
    """[F, 2] (x, y) centroid in canvas units per frame (NaN where the mask is empty)."""
    frames, height, width = mask.shape
    area = mask.sum((1, 2)).astype(np.float64)
    ys = (np.arange(height) + 0.5) / height
    xs = (np.arange(width) + 0.5) / width
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (mask.sum(1) * xs).sum(1) / area
        cy = (mask.sum(2) * ys).sum(1) / area
    return np.stack([cx, cy], axis=1)


def _thirds(values: np.ndarray) -> tuple[float, float]:
    """Mean over the first and the last third of the frames (NaN-aware)."""
    k = max(1, len(values) // 3)
    return float(np.nanmean(values[:k])), float(np.nanmean(values[-k:]))


def _moving_check(direction: str) -> Callable[[np.ndarray], bool]:
    dx, dy = DIRECTIONS[direction]

    def check(mask: np.ndarray) -> bool:
        c = _centroids(mask)
        (x0, x1), (y0, y1) = _thirds(c[:, 0]), _thirds(c[:, 1])
        along = (x1 - x0) * dx + (y1 - y0) * dy
        across = abs((x1 - x0) * dy - (y1 - y0) * dx)
        return bool(along > MIN_TRAVEL * 2 / 3 and across < along)

    return check


def _area_ratio(mask: np.ndarray) -> float:
    first, last = _thirds(mask.sum((1, 2)).astype(np.float64))
    return last / max(first, 1.0)


def _mean_change(mask: np.ndarray) -> float:
    """Mean share of the object's pixels that change from one frame to the next (0 = still)."""
    changed = (mask[1:] ^ mask[:-1]).sum((1, 2)).astype(np.float64)
    return float(changed.sum() / max(mask[:-1].sum(), 1))


def _bouncing_check(mask: np.ndarray) -> bool:
    # moving (the mask changes) without growing
    return bool(_mean_change(mask) > 0.1 and 0.6 < _area_ratio(mask) < 1.6)


def _growing_check(mask: np.ndarray) -> bool:
    return bool(_area_ratio(mask) > 1.6)


def _turning_check(mask: np.ndarray) -> bool:
    # changes shape while keeping its area and staying in place
    c = _centroids(mask)
    (x0, x1), (y0, y1) = _thirds(c[:, 0]), _thirds(c[:, 1])
    still = math.hypot(x1 - x0, y1 - y0) < MIN_TRAVEL / 2
    return bool(still and 0.7 < _area_ratio(mask) < 1.4 and _mean_change(mask) > 0.02)


MOTION_CHECKS: dict[str, Callable[[np.ndarray], bool]] = {
    **{f"moving {d}": _moving_check(d) for d in DIRECTIONS},
    "bouncing": _bouncing_check,
    "growing": _growing_check,
    "turning": _turning_check,
}


def score_clip(video: np.ndarray, prompt: str) -> dict[str, float | int | str | bool]:
    """Score a clip ([F, H, W, 3], uint8 or float in [0, 1]) against its prompt.

    - colour: the object colour covering the most pixels (over all frames) is the prompted one;
    - count: the median over frames of the number of connected regions of the prompted colour, each at least
      MIN_OBJECT_AREA, equals the prompted count;
    - motion: MOTION_CHECKS[motion] holds on the prompted colour's mask (centroid travel for "moving <dir>",
      area growth for "growing", in-place shape change for "turning", motion without growth for "bouncing").

    `adherence` is the mean of the three booleans.
    """
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be [frames, height, width, 3], got shape {tuple(video.shape)}")
    facts = parse_prompt(prompt)
    masks = colour_masks(video)
    coverage = {name: int(m.sum()) for name, m in masks.items()}
    dominant = max(coverage, key=coverage.get)
    mask = masks[facts.colour]
    min_pixels = MIN_OBJECT_AREA * video.shape[1] * video.shape[2]
    counts = [_count_blobs(frame, min_pixels) for frame in mask]
    count = int(np.median(counts))
    colour_ok = dominant == facts.colour and coverage[dominant] > 0
    count_ok = count == facts.count
    motion_ok = bool(mask.any(axis=(1, 2)).all()) and MOTION_CHECKS[facts.motion](mask)
    return {
        "prompt": prompt,
        "dominant_colour": dominant,
        "count": count,
        "colour_ok": bool(colour_ok),
        "count_ok": bool(count_ok),
        "motion_ok": bool(motion_ok),
        "adherence": (float(colour_ok) + float(count_ok) + float(motion_ok)) / 3.0,
    }
