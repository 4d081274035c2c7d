"""Procedural text-to-video data with the statistics that make real video attention local: textured scenes that
drift, zoom or turn by a few pixels a frame, with a textured object moving over them on its own.

Why: flat shapes on flat backgrounds (`vidsparse.testing.shapes`) can be denoised from global summaries, so a
model trained on them keeps diffuse attention. Here every region is textured and moves by small displacements,
so the best estimate of a noisy token is its spatial neighbours and the same content one frame earlier,
displaced; the prompt still matters, because it names the palettes, textures, object and motions.

A clip (`ClipSpec`) is a background texture in one palette that moves as a whole (the camera), and optionally
one textured object in another palette that moves in a straight line across the frame, independently of the
background, occluding and uncovering it. Prompts read, e.g.:

    "a fire striped circle moving right over ocean noise drifting left quickly"
    "mono checkers zooming in slowly"

Space and time are continuous (canvas units in [0, 1]^2, time tau in [0, 1] over the clip), so a clip can be
rendered at any frame count and resolution, and a short, small clip is a subsample of the long, large one.
Textures are smooth functions of the canvas position (1/f noise is a sum of random plane waves with amplitude
1/f), each with a weak 1/f-noise detail layer, so no texture is ever purely one-dimensional or periodic and its
motion is always observable. Values in [0, 1] map onto the palette's colour ramp (dark end to light end).

Background motions (what the content does on screen; speeds per clip):
    drifting <dir>          translation by DRIFT[speed] canvas units
    zooming in / out        scaling about the centre by ZOOM[speed] (or its inverse)
    turning <sense>         rotation about the centre by TURN[speed] radians, clockwise as seen on screen
    standing still          no motion (no speed word)

`score_clip` checks a clip against its prompt: the background palette, the background motion (kind, direction
and speed: of the motions the generator can make, the one that best registers each frame onto the one two frames
later, if any does), and the object (present in its palette, moving in its direction) or its absence.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

PALETTES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {  # dark end, light end (RGB)
    "fire": ((110, 15, 10), (255, 190, 60)),
    "ocean": ((10, 30, 110), (90, 210, 240)),
    "forest": ((15, 75, 20), (170, 235, 90)),
    "violet": ((75, 15, 95), (240, 140, 240)),
    "mono": ((25, 25, 25), (235, 235, 235)),
}
TEXTURES = ("noise", "stripes", "checkers", "dots", "gradient")  # background nouns
TEXTURE_ADJECTIVES = {"noise": "noisy", "stripes": "striped", "checkers": "checkered", "dots": "dotted",
                      "gradient": "shaded"}  # the same textures on an object
OBJECT_SHAPES = ("circle", "square")
DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0),
                                              "down": (0.0, 1.0)}  # image coordinates: y grows downwards
SPEEDS = ("slowly", "quickly")
CAMERA_MOTIONS = (*(f"drifting {d}" for d in DIRECTIONS), "zooming in", "zooming out", "turning clockwise",
                  "turning counterclockwise", "standing still")

DRIFT = {"slowly": 0.375, "quickly": 0.75}  # canvas units per clip: 1.5 / 3 pixels a frame at 17 x 64 x 64
ZOOM = {"slowly": 1.4, "quickly": 2.0}  # scale factor over the clip
TURN = {"slowly": 0.4, "quickly": 0.8}  # radians over the clip
OBJECT_TRAVEL = 0.45  # canvas units per clip
OBJECT_RADIUS = (0.14, 0.18)
OBJECT_PROBABILITY = 0.75
DETAIL = 0.25  # weight of the 1/f-noise detail layer on every texture but noise itself

# Held out of training (`sample_clip_spec` never draws them): evaluation and attention analysis prompts, every
# palette, texture, object shape, direction and background motion at least once.
HELD_OUT_PROMPTS: tuple[str, ...] = (
    "a fire striped circle moving right over ocean noise drifting left quickly",
    "an ocean dotted square moving left over forest checkers drifting right slowly",
    "a violet checkered circle moving up over mono stripes drifting down quickly",
    "a mono noisy square moving down over fire gradient drifting up slowly",
    "a forest shaded circle moving left over violet dots zooming in quickly",
    "a fire checkered square moving up over mono noise zooming out slowly",
    "an ocean striped circle moving down over violet checkers turning clockwise slowly",
    "a violet noisy square moving right over forest stripes turning counterclockwise quickly",
    "ocean stripes drifting left slowly",
    "forest noise zooming in slowly",
    "violet gradient turning clockwise quickly",
    "mono dots standing still",
    "a forest dotted circle moving right over fire noise standing still",
    "fire checkers drifting down quickly",
    "a mono striped square moving left over ocean gradient drifting up quickly",
    "mono noise zooming out quickly",
)


@dataclass(frozen=True)
class TexturedObject:
    """The object: shape, palette, texture (and its seed), start centre (x, y), radius, velocity per clip."""

    shape: str
    palette: str
    texture: str
    texture_seed: int
    x: float
    y: float
    radius: float
    vx: float
    vy: float

    @property
    def direction(self) -> str:
        return next(d for d, (dx, dy) in DIRECTIONS.items() if (dx, dy) == (np.sign(self.vx), np.sign(self.vy)))


@dataclass(frozen=True)
class ClipSpec:
    """The ground truth of one clip."""

    palette: str
    texture: str
    texture_seed: int
    camera: str  # one of CAMERA_MOTIONS
    speed: str | None  # one of SPEEDS, None when standing still
    object: TexturedObject | None

    @property
    def prompt(self) -> str:
        scene = f"{self.palette} {self.texture} {self.camera}" + (f" {self.speed}" if self.speed else "")
        if self.object is None:
            return scene
        o = self.object
        article = "an" if o.palette[0] in "aeiou" else "a"
        return f"{article} {o.palette} {TEXTURE_ADJECTIVES[o.texture]} {o.shape} moving {o.direction} over {scene}"


@dataclass(frozen=True)
class PromptFacts:
    """What a prompt asks for, parsed back from its text (object fields are None without an object)."""

    palette: str
    texture: str
    camera: str
    speed: str | None
    object_palette: str | None
    object_texture: str | None
    object_shape: str | None
    object_direction: str | None


_PROMPT_RE = re.compile(
    r"^(?:an? (?P<opal>\w+) (?P<otex>\w+) (?P<shape>\w+) moving (?P<odir>\w+) over )?"
    r"(?P<pal>\w+) (?P<tex>\w+) (?P<camera>drifting \w+|zooming \w+|turning \w+|standing still)(?: (?P<speed>\w+))?$"
)


def parse_prompt(prompt: str) -> PromptFacts:
    """Inverse of `ClipSpec.prompt`; raises ValueError for text the generator never writes."""
    match = _PROMPT_RE.match(prompt.strip().lower())
    if match is None:
        raise ValueError(f"prompt {prompt!r} is not of the form '[a|an <palette> <texture-adjective> <shape> moving "
                         f"<direction> over ]<palette> <texture> <background motion>[ <speed>]'")
    g = match.groupdict()
    adjectives = {a: t for t, a in TEXTURE_ADJECTIVES.items()}
    checks = [("palette", g["pal"], PALETTES), ("texture", g["tex"], TEXTURES),
              ("background motion", g["camera"], CAMERA_MOTIONS)]
    if g["opal"] is not None:
        checks += [("object palette", g["opal"], PALETTES), ("object texture", g["otex"], adjectives),
                   ("object shape", g["shape"], OBJECT_SHAPES), ("object direction", g["odir"], DIRECTIONS)]
    for name, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"prompt {prompt!r}: {name} {value!r} is not one of {sorted(allowed)}")
    still = g["camera"] == "standing still"
    if (g["speed"] is None) != still or (g["speed"] is not None and g["speed"] not in SPEEDS):
        raise ValueError(f"prompt {prompt!r}: a moving background needs a speed in {SPEEDS}, a still one none")
    return PromptFacts(g["pal"], g["tex"], g["camera"], g["speed"], g["opal"],
                       adjectives.get(g["otex"]) if g["otex"] else None, g["shape"], g["odir"])


def prompt_vocabulary() -> list[str]:
    """Every word the generator can write, sorted (the text encoder's vocabulary)."""
    words = {"a", "an", "moving", "over", *PALETTES, *TEXTURES, *TEXTURE_ADJECTIVES.values(), *OBJECT_SHAPES,
             *DIRECTIONS, *SPEEDS}
    words |= {w for m in CAMERA_MOTIONS for w in m.split()}
    return sorted(words)


def _moving_object(rng: np.random.Generator, direction: str,
                   look: Callable[[], tuple[str, str, str]]) -> TexturedObject:
    """An object crossing the frame in `direction` from a random lane, starting on the opposite side; `look`
    gives its (shape, palette, texture), called after the lane and start are drawn (the order of the draws is
    part of the dataset)."""
    dx, dy = DIRECTIONS[direction]
    lane, start = rng.uniform(0.3, 0.7), rng.uniform(0.22, 0.3)
    x, y = (1.0 - start if dx < 0 else start, lane) if dx != 0 else (lane, 1.0 - start if dy < 0 else start)
    shape, palette, texture = look()
    return TexturedObject(shape, palette, texture, int(rng.integers(2**31)), x, y, float(rng.uniform(*OBJECT_RADIUS)),
                          dx * OBJECT_TRAVEL, dy * OBJECT_TRAVEL)


def _draw_spec(rng: np.random.Generator) -> ClipSpec:
    palette = list(PALETTES)[rng.integers(len(PALETTES))]
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    camera = CAMERA_MOTIONS[rng.integers(len(CAMERA_MOTIONS))]
    speed = None if camera == "standing still" else SPEEDS[rng.integers(len(SPEEDS))]
    obj = None
    if rng.random() < OBJECT_PROBABILITY:
        others = [p for p in PALETTES if p != palette]
        direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
        obj = _moving_object(rng, direction, lambda: (OBJECT_SHAPES[rng.integers(len(OBJECT_SHAPES))],
                                                      others[rng.integers(len(others))],
                                                      TEXTURES[rng.integers(len(TEXTURES))]))
    return ClipSpec(palette, texture, int(rng.integers(2**31)), camera, speed, obj)


def sample_clip_spec(rng: np.random.Generator, *, held_out: bool = False) -> ClipSpec:
    """Draw one clip's ground truth uniformly over palettes, textures, background motions and speeds, with an
    object (shape, other palette, texture, direction) 3 times in 4. Clips whose prompt is in HELD_OUT_PROMPTS
    are redrawn unless `held_out` (so training never sees the evaluation prompts)."""
    while True:
        spec = _draw_spec(rng)
        if held_out or spec.prompt not in HELD_OUT_PROMPTS:
            return spec


def spec_for_prompt(prompt: str, rng: np.random.Generator) -> ClipSpec:
    """A ground-truth clip for `prompt`: what it names is fixed, the rest (seeds, lane, radius) drawn from `rng`."""
    facts = parse_prompt(prompt)
    obj = None
    if facts.object_palette is not None:
        look = (facts.object_shape, facts.object_palette, facts.object_texture)
        obj = _moving_object(rng, facts.object_direction, lambda: look)
    return ClipSpec(facts.palette, facts.texture, int(rng.integers(2**31)), facts.camera, facts.speed, obj)


# ---------------------------------------------------------------------------------------------- rendering

def _plane_waves(rng: np.random.Generator, count: int, low: float, high: float):
    """`count` random plane waves: frequencies log-uniform in [low, high] cycles per canvas unit, amplitude 1/f."""
    freq = np.exp(rng.uniform(math.log(low), math.log(high), size=count))
    theta = rng.uniform(0.0, 2.0 * math.pi, size=count)
    phase = rng.uniform(0.0, 2.0 * math.pi, size=count)
    amplitude = 1.0 / freq
    amplitude /= math.sqrt(float((amplitude**2).sum()) / 2.0)  # unit standard deviation
    return freq * np.cos(theta), freq * np.sin(theta), phase, amplitude


def _noise(u: np.ndarray, v: np.ndarray, waves) -> np.ndarray:
    """1/f noise in [0, 1] (a squashed unit-variance sum of plane waves)."""
    ku, kv, phase, amplitude = waves
    total = np.zeros_like(u)
    for a, b, p, amp in zip(ku, kv, phase, amplitude):
        total += amp * np.cos(2.0 * math.pi * (a * u + b * v) + p)
    return 0.5 + 0.5 * np.tanh(0.8 * total)


def texture_field(kind: str, seed: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Texture `kind` with parameters drawn from `seed`, evaluated at canvas positions (u, v): values in [0, 1]."""
    rng = np.random.default_rng(seed)
    detail = _noise(u, v, _plane_waves(rng, 24, 1.0, 10.0))
    if kind == "noise":
        return detail
    angle = rng.uniform(0.0, math.pi)
    a = math.cos(angle) * u + math.sin(angle) * v
    b = -math.sin(angle) * u + math.cos(angle) * v
    if kind == "stripes":  # wavy, so that motion along the stripes is visible too
        wave = 0.04 * np.sin(2.0 * math.pi * b / rng.uniform(0.3, 0.5))
        base = 0.5 + 0.5 * np.tanh(3.0 * np.sin(2.0 * math.pi * (a + wave) / rng.uniform(0.1, 0.2)))
    elif kind == "checkers":
        cell = rng.uniform(0.08, 0.14)
        base = 0.5 + 0.5 * np.tanh(4.0 * np.sin(math.pi * a / cell) * np.sin(math.pi * b / cell))
    elif kind == "dots":
        period = rng.uniform(0.12, 0.2)
        da = np.mod(a / period, 1.0) - 0.5
        db = np.mod(b / period, 1.0) - 0.5
        distance = period * np.hypot(da, db)
        base = 0.1 + 0.8 / (1.0 + np.exp((distance - 0.3 * period) / 0.01))
    elif kind == "gradient":
        period = rng.uniform(1.2, 2.0)
        base = np.abs(2.0 * np.mod(a / period, 1.0) - 1.0)
    else:
        raise ValueError(f"texture must be one of {TEXTURES}, got {kind!r}")
    return (1.0 - DETAIL) * base + DETAIL * detail


def palette_colours(palette: str, values: np.ndarray) -> np.ndarray:
    """Texture values [...] in [0, 1] -> RGB [..., 3] on the palette's ramp (0-255 floats)."""
    dark, light = (np.asarray(c, dtype=np.float64) for c in PALETTES[palette])
    return dark + values[..., None] * (light - dark)


def camera_transform(camera: str, speed: str | None, tau: float) -> tuple[float, float, tuple[float, float]]:
    """(scale, angle, (dx, dy)) of the background at time tau: content at world point w is seen on screen at
    c + scale * R(angle) (w - c) + (dx, dy), c the canvas centre, R clockwise on screen for angle > 0."""
    kind, _, arg = camera.partition(" ")
    if kind == "drifting":
        dx, dy = DIRECTIONS[arg]
        return 1.0, 0.0, (dx * DRIFT[speed] * tau, dy * DRIFT[speed] * tau)
    if kind == "zooming":
        return ZOOM[speed] ** (tau if arg == "in" else -tau), 0.0, (0.0, 0.0)
    if kind == "turning":
        return 1.0, TURN[speed] * tau * (1.0 if arg == "clockwise" else -1.0), (0.0, 0.0)
    return 1.0, 0.0, (0.0, 0.0)


def _screen_to_world(camera: str, speed: str | None, tau, px: np.ndarray, py: np.ndarray):
    """Canvas point seen at screen position (px, py) at time tau (the inverse of `camera_transform`; tau may be an
    array that broadcasts against px and py)."""
    scale, angle, (dx, dy) = camera_transform(camera, speed, tau)
    qx, qy = px - 0.5 - dx, py - 0.5 - dy
    c, s = np.cos(angle), np.sin(angle)
    return 0.5 + (c * qx + s * qy) / scale, 0.5 + (-s * qx + c * qy) / scale


def _world_to_screen(camera: str, speed: str | None, tau, wx: np.ndarray, wy: np.ndarray):
    scale, angle, (dx, dy) = camera_transform(camera, speed, tau)
    c, s = np.cos(angle), np.sin(angle)
    qx, qy = scale * (wx - 0.5), scale * (wy - 0.5)
    return 0.5 + c * qx - s * qy + dx, 0.5 + s * qx + c * qy + dy


def _object_sdf(obj: TexturedObject, qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    if obj.shape == "circle":
        return np.hypot(qx, qy) - obj.radius
    return np.maximum(np.abs(qx), np.abs(qy)) - 0.88 * obj.radius  # half side 0.88 r: about a circle's area


def render_clip(spec: ClipSpec, *, frames: int, height: int, width: int,
                with_mask: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The clip as uint8 [frames, height, width, 3] (frame i shows tau = i / (frames - 1)); with `with_mask`, also
    the object's coverage as bool [frames, height, width] (pixels at least half covered)."""
    for name, value, low in (("frames", frames, 2), ("height", height, 8), ("width", width, 8)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    scale_px = float(min(height, width))
    gy, gx = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    video = np.empty((frames, height, width, 3))
    mask = np.zeros((frames, height, width), dtype=bool)
    for i, tau in enumerate(np.linspace(0.0, 1.0, frames)):
        u, v = _screen_to_world(spec.camera, spec.speed, tau, gx, gy)
        video[i] = palette_colours(spec.palette, texture_field(spec.texture, spec.texture_seed, u, v))
        obj = spec.object
        if obj is not None:
            qx, qy = gx - (obj.x + obj.vx * tau), gy - (obj.y + obj.vy * tau)
            alpha = np.clip(0.5 - scale_px * _object_sdf(obj, qx, qy), 0.0, 1.0)
            colour = palette_colours(obj.palette, texture_field(obj.texture, obj.texture_seed, qx, qy))
            video[i] = (1.0 - alpha[..., None]) * video[i] + alpha[..., None] * colour
            mask[i] = alpha >= 0.5
    video = np.round(video).astype(np.uint8)
    return (video, mask) if with_mask else video


# ---------------------------------------------------------------------------------------------- scoring

PALETTE_TOLERANCE = 0.2  # max RGB distance (in [0, 1] units) from a palette's ramp for a pixel to count
MOTION_GAP = 2  # frames between the registered pairs
MOTION_MARGIN = 0.9  # a motion must explain the frame pairs this much better than standing still
MAX_UNEXPLAINED = 0.5  # and leave at most this share of the frame-to-frame difference of unrelated frames


def palette_labels(video: np.ndarray) -> np.ndarray:
    """Per pixel, the index (into PALETTES) of the nearest palette ramp, or -1 when none is within
    PALETTE_TOLERANCE; `video` is uint8 or float in [0, 1], [F, H, W, 3]."""
    pixels = video.astype(np.float64) / 255.0 if video.dtype == np.uint8 else video.astype(np.float64)
    distances = []
    for dark, light in PALETTES.values():
        d0, d1 = np.asarray(dark) / 255.0, np.asarray(light) / 255.0
        t = np.clip(((pixels - d0) @ (d1 - d0)) / float((d1 - d0) @ (d1 - d0)), 0.0, 1.0)
        distances.append(np.linalg.norm(pixels - (d0 + t[..., None] * (d1 - d0)), axis=-1))
    distance = np.stack(distances, axis=-1)
    labels = distance.argmin(-1)
    return np.where(distance.min(-1) < PALETTE_TOLERANCE, labels, -1)


def _bilinear(images: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`images` [N, H, W, C] sampled at pixel coordinates (x, y) [N, H, W] and where they fall inside them."""
    height, width = images.shape[1:3]
    inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    x, y = np.clip(x, 0, width - 1), np.clip(y, 0, height - 1)
    x0, y0 = np.minimum(x.astype(int), width - 2), np.minimum(y.astype(int), height - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    n = np.arange(len(images))[:, None, None]
    top = (1 - fx) * images[n, y0, x0] + fx * images[n, y0, x0 + 1]
    bottom = (1 - fx) * images[n, y0 + 1, x0] + fx * images[n, y0 + 1, x0 + 1]
    return (1 - fy) * top + fy * bottom, inside


def motion_residuals(video: np.ndarray, exclude: np.ndarray | None = None) -> dict[tuple[str, str | None], float]:
    """How well each background motion the generator can make explains the clip: per (motion, speed), the mean
    squared difference between every frame and the frame MOTION_GAP later warped back by that motion (bilinear;
    direct registration of a parametric motion model), over the pixels that stay in view and that `exclude`
    (bool [F, H, W], e.g. the object) marks in neither frame, as a share of what two unrelated frames of the clip
    would differ by (twice its pixel variance): near 0 for the true motion, near 1 for noise."""
    pixels = video.astype(np.float64) / 255.0 if video.dtype == np.uint8 else video.astype(np.float64)
    frames, height, width, _ = pixels.shape
    gap = min(MOTION_GAP, frames - 1)
    gy, gx = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    taus = np.linspace(0.0, 1.0, frames)[:, None, None]
    hypotheses = [(m, None) if m == "standing still" else (m, s) for m in CAMERA_MOTIONS for s in SPEEDS]
    result = {}
    for camera, speed in dict.fromkeys(hypotheses):
        # frame f + gap at p shows the world point w, which frame f showed at its own screen position
        wx, wy = _screen_to_world(camera, speed, taus[gap:], gx, gy)
        sx, sy = _world_to_screen(camera, speed, taus[:-gap], wx, wy)
        shape = (frames - gap, height, width)  # a still camera's transform does not depend on tau
        sx, sy = np.broadcast_to(sx * width - 0.5, shape), np.broadcast_to(sy * height - 0.5, shape)
        earlier, inside = _bilinear(pixels[:-gap], sx, sy)
        if exclude is not None:
            moved, _ = _bilinear(exclude[:-gap, ..., None].astype(np.float64), sx, sy)
            inside &= (moved[..., 0] == 0) & ~exclude[gap:]
        squared = ((pixels[gap:] - earlier) ** 2).sum(-1)
        result[(camera, speed)] = float(squared[inside].sum()) / max(int(inside.sum()), 1)
    unrelated = 2.0 * float(pixels.reshape(-1, 3).var(axis=0).sum())
    return {key: value / max(unrelated, 1e-12) for key, value in result.items()}


def classify_motion(residuals: dict[tuple[str, str | None], float]) -> tuple[str, str | None]:
    """The (motion, speed) with the smallest `motion_residuals`, or standing still unless that motion explains
    the clip clearly better (below MOTION_MARGIN times standing still's residual); ("incoherent", None) when even
    the best leaves more than MAX_UNEXPLAINED (noise, or frames that do not follow from each other)."""
    best = min(residuals, key=residuals.get)
    if residuals[best] > MAX_UNEXPLAINED:
        return "incoherent", None
    still = ("standing still", None)
    return best if residuals[best] < MOTION_MARGIN * residuals[still] else still


def _object_area(shape: str) -> float:
    """Mean object area in canvas units."""
    r = float(np.mean(OBJECT_RADIUS))
    return math.pi * r * r if shape == "circle" else (2 * 0.88 * r) ** 2


def score_clip(video: np.ndarray, prompt: str) -> dict[str, float | bool | str | None]:
    """Score a clip ([F, H, W, 3], uint8 or float in [0, 1]) against its prompt.

    - palette: the most frequent palette label (`palette_labels`) over the clip is the background's;
    - motion: `classify_motion(motion_residuals(...))` gives the prompted background motion (kind and direction),
      pixels of the object's palette left out;
    - speed: and its speed (for "standing still", the same as motion);
    - object: with an object, pixels of its palette cover 0.3-3x its area in at least 70% of the frames and their
      centroid travels at least half of OBJECT_TRAVEL in its direction, less across it; without one, no other
      palette covers 0.3x an object's area in more than 30% of the frames.

    `adherence` is the mean of the four booleans.
    """
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be [frames, height, width, 3], got shape {tuple(video.shape)}")
    facts = parse_prompt(prompt)
    names = list(PALETTES)
    labels = palette_labels(video)
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=len(names))
    dominant = names[int(counts.argmax())] if counts.any() else None
    pixels = video.shape[1] * video.shape[2]
    if facts.object_palette is not None:
        on_object = labels == names.index(facts.object_palette)
        area = _object_area(facts.object_shape) * pixels
        shares = on_object.sum((1, 2))
        present = (shares >= 0.3 * area) & (shares <= 3.0 * area)
        object_ok = bool(present.mean() >= 0.7) and _travels(on_object, present, facts.object_direction)
        exclude = on_object
    else:
        smallest = _object_area("circle") * (OBJECT_RADIUS[0] / np.mean(OBJECT_RADIUS)) ** 2 * pixels
        others = [k for k, n in enumerate(names) if n != facts.palette]
        largest_other = np.max([(labels == k).sum((1, 2)) for k in others], axis=0)
        object_ok = bool((largest_other >= 0.3 * smallest).mean() <= 0.3)
        exclude = None
    motion, speed = classify_motion(motion_residuals(video, exclude))
    palette_ok = dominant == facts.palette
    motion_ok = motion == facts.camera
    speed_ok = motion_ok and speed == facts.speed
    return {"prompt": prompt, "dominant_palette": dominant, "motion": motion, "speed": speed,
            "palette_ok": palette_ok, "motion_ok": motion_ok, "speed_ok": speed_ok, "object_ok": object_ok,
            "adherence": (palette_ok + motion_ok + speed_ok + object_ok) / 4.0}


def _travels(mask: np.ndarray, present: np.ndarray, direction: str) -> bool:
    """Whether the centroid of `mask` over the frames where the object is present travels in `direction`."""
    frames = np.flatnonzero(present)
    if len(frames) < 2:
        return False
    height, width = mask.shape[1:]
    ys, xs = (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width
    area = mask[frames].sum((1, 2)).astype(np.float64)
    cx = (mask[frames].sum(1) * xs).sum(1) / area
    cy = (mask[frames].sum(2) * ys).sum(1) / area
    k = max(1, len(frames) // 3)
    span = (frames[-k:].mean() - frames[:k].mean()) / (mask.shape[0] - 1)  # share of the clip between the thirds
    mx, my = cx[-k:].mean() - cx[:k].mean(), cy[-k:].mean() - cy[:k].mean()
    dx, dy = DIRECTIONS[direction]
    along, across = mx * dx + my * dy, abs(mx * dy - my * dx)
    return bool(along > 0.5 * OBJECT_TRAVEL * span and across < along)
