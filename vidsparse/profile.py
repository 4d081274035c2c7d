"""Profile files: which strategy every layer and head uses, per step bucket, as versioned human-readable JSON.

A profile is data, never code: `Profile.load` parses JSON and looks strategies up by name in the registry
(`vidsparse.strategies.get`), and every field is checked, so a wrong file fails with a `ProfileError` naming the
field (e.g. ``buckets[0].layers[3].heads[5].params: diagonal: width must be ...``). `Profile.save` is atomic:
the JSON goes to a temporary file in the same folder, is flushed to disk and renamed over the target, so a crash
never leaves a truncated profile.

Format "vidsparse.profile/3":

    {
      "format": "vidsparse.profile/3",
      "model":       {"family", "name", "revision", "num_layers", "num_heads", "head_dim"},
      "calibration": {"prompts", "steps", "frames", "height", "width", "grid": [F, H, W], "tile": [tf, th, tw],
                      "seed", "sampled_steps": [...], "rows", "objective": {"error": 0.05} | {"target_speedup": 3.0},
                      "selection": {"statistic": "mean" | "max" | "prediction", "margin": 2.0}, "seconds"},
      "schedule":    {"dense_warmup_steps": 0.2 (fraction) | 3 (count), "dense_layers": [0]},
      "hardware":    {"cost": "measured" | "ideal", "device", "backend", "dtype", "tokens", "heads", "head_dim", "block_size",
                      "dense_ms", "fixed_ms", "ms_per_block", "points": [[blocks, ms], ...],
                      "planning_ms": {"draft": ms per call, ...}},
      "buckets": [   {"start": 0.0, "stop": 0.6,              # fraction of the denoising steps, [start, stop)
                      "layers": [{"layer": 0, "heads": [{"strategy": "diagonal", "params": {...},
                                                         "error": 0.01, "error_se": 0.0004, "error_max": 0.013,
                                                         "error_bound": 0.016, "recall": 0.98, "density": 0.3},
                                                        ...]}]}],
      "summary":     {"mean_density", "predicted_speedup", "predicted_error", "latent_error", "latent_error_bound"}
    }

Per head, `error` is the mean relative L2 error of the head's output over the scored calls (the prediction, and
what `vidsparse.guard` budgets), `error_se` the standard error of that mean (over the calls; null when unknown:
one call, or a dense head), `error_max` the largest error of one scored call, `error_bound` the upper prediction
bound for the head's mean error in one new generation (another prompt or seed): mean + margin x the spread of the
per-prompt mean errors x sqrt(1 + 1 / prompts) (null when unknown: one prompt). This bound, not the mean, is what a
head should be expected to stay under on prompts the profile never saw: the error of one generation moves around
the mean by the spread between generations, which the standard error of the mean understates by sqrt(prompts).
`calibration.selection` says which error the selection held within the objective: mean + margin x error_se
("mean"), error_max ("max") or error_bound ("prediction").
`summary.latent_error` is the largest relative L2 error of the final latents of the calibration runs made with the
final profile, and `summary.latent_error_bound` the upper prediction bound for one new generation over those runs
(same rule; null with fewer than two runs); when the runs stating the level are fewer than the refinement's runs
(`--latent-holdout`, `--estimate`), the level is their mean and the spread relative to the mean the refinement runs'
(`vidsparse.profiler.calibrate.scaled_prediction_bound`); see `vidsparse.profiler.validate`.

Densities are what the kernel computes (`BlockPlan.density`: slot pairs, padding included, over real token pairs).
Buckets cover the step fractions [0, 1) in order; step s of a run of N steps uses the bucket holding s / N, so
a profile calibrated with 50 steps applies to 30.

At another grid (resolution or frame count). The calibration grid and tile rebuild the exact plans that were
measured. Strategy parameters are in latent frames and in tiles, and the runtime uses one tile at every grid
(`vidsparse.layout.DEFAULT_TILE`, 1 x 8 x 16 latent tokens), so a parameter means the same latent extent on every
grid: a neighborhood window (3, 3, 3) is 3 frames x 24 rows x 48 columns of latent tokens around the query's tile
at 480p, at 720p and at any frame count; diagonal(temporal="all") keeps every frame of the video. Near the borders
and in the blocks that pack edge tiles the pattern follows the grid (windows shift at the borders; a packed block
keeps what its tiles keep). The limits: the errors and densities in the file were measured at the calibration
grid only (a window covers a larger share of a smaller video); an explicit stripe tile that lies outside a smaller
grid keeps nothing there (with a warning). A profile whose tile is not the runtime's (files written by older
versions) is applied with its tile-unit parameters converted to the runtime's tile, rounded to whole tiles
(`Strategy.retiled`): the same latent extent within one tile. `Profile.note_grid` logs which case applies.

Version 2 files ("vidsparse.profile/2") load with the version 3 fields unknown: error_se, error_max, error_bound,
latent_error and latent_error_bound null, selection {"statistic": "mean", "margin": 0} (what version 2's profiler
did). In a version 3 file these fields may also be left out, with the same meaning.
Version 1 files ("vidsparse.profile/1") load with two rules: their tile is the one vidsparse then chose for the
calibration grid (the least-padding of seven 128-token tiles, `_V1_TILES`), and a multi-diagonal whose
`temporal` reaches the last calibration frame (how version 1 spelled "all frames") becomes temporal="all". Their
densities counted real token pairs only (then the version 2 rule applies). Saving writes version 3.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .controller import DenseSchedule
from .layout import DEFAULT_TILE
from .strategies import Strategy, get
from .strategies.dense import Dense

FORMAT = "vidsparse.profile/3"
FORMAT_V2 = "vidsparse.profile/2"
FORMAT_V1 = "vidsparse.profile/1"
#: What version 2's profiler did, and what a file that does not say is read as.
UNSTATED_SELECTION = {"statistic": "mean", "margin": 0.0}
#: The 128-token tiles version 1 chose from, in order: the first with the fewest tiles (padded) on the grid.
_V1_TILES = ((2, 8, 8), (1, 8, 16), (1, 16, 8), (4, 4, 8), (4, 8, 4), (2, 4, 16), (2, 16, 4))
logger = logging.getLogger(__name__)


class ProfileError(ValueError):
    """A profile file or object is invalid; the message starts with the offending field."""


# ----- the sections ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """The model a profile was made for; `vidsparse.patch` checks family, num_layers and num_heads."""

    family: str
    name: str
    revision: str | None
    num_layers: int
    num_heads: int
    head_dim: int


@dataclass(frozen=True)
class Calibration:
    """How the profile was measured: prompts count, steps, resolution, latent grid and tile (together they
    rebuild the measured plans), seed, what was sampled."""

    prompts: int
    steps: int
    frames: int
    height: int
    width: int
    grid: tuple[int, int, int]
    seed: int
    sampled_steps: tuple[int, ...]
    rows: int
    objective: dict[str, float]
    seconds: float
    tile: tuple[int, int, int] = DEFAULT_TILE
    selection: dict[str, Any] = field(default_factory=lambda: dict(UNSTATED_SELECTION))


@dataclass(frozen=True)
class Schedule:
    """Dense warm-up (int step count or float fraction of the steps in [0, 1)) and layers always dense."""

    dense_warmup_steps: int | float
    dense_layers: tuple[int, ...]


@dataclass(frozen=True)
class Hardware:
    """The measured cost table: time of one attention call of `heads` heads of `tokens` tokens on `device`.

    Sparse call time = fixed_ms + ms_per_block * (computed block pairs, summed over heads), a least-squares fit
    of `points` ("measured"), or the dense kernel's time per block pair and no fixed cost ("ideal", for profiles
    made on another machine than the target); dense call time = dense_ms (the dense kernel); dynamic strategies
    add planning_ms[name] per call.
    """

    cost: str
    device: str
    backend: str
    dtype: str
    tokens: int
    heads: int
    head_dim: int
    block_size: int
    dense_ms: float
    fixed_ms: float
    ms_per_block: float
    points: tuple[tuple[int, float], ...]
    planning_ms: dict[str, float]


@dataclass(frozen=True)
class HeadChoice:
    """One head's strategy in one bucket, with what the profiler measured for it: means over the scored calls,
    the standard error of the mean error and the largest error of one call (None: unknown)."""

    strategy: Strategy
    error: float
    recall: float
    density: float
    error_se: float | None = None
    error_max: float | None = None
    error_bound: float | None = None


@dataclass(frozen=True)
class Bucket:
    """Strategies for the denoising steps s with start <= s / num_steps < stop; heads[layer][head]."""

    start: float
    stop: float
    heads: tuple[tuple[HeadChoice, ...], ...]


@dataclass(frozen=True)
class Summary:
    mean_density: float
    predicted_speedup: float
    predicted_error: float
    latent_error: float | None = None
    latent_error_bound: float | None = None


@dataclass(frozen=True)
class Profile:
    """A loaded (validated) profile. Build one with `vidsparse.profiler.profile_pipeline` or `Profile.load`."""

    model: ModelSpec
    calibration: Calibration
    schedule: Schedule
    hardware: Hardware
    buckets: tuple[Bucket, ...]
    summary: Summary
    #: Wall seconds of the profiling phases when made by the profiler (not saved).
    timings: dict = field(default_factory=dict, repr=False, compare=False)
    #: The profiler's work, counted (`vidsparse.profiler.accounting.ProfilingWork` as a dict; not saved).
    work: dict = field(default_factory=dict, repr=False, compare=False)
    _policy_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Objects built in code get the same checks as loaded files.
        _validate_profile_dict(self.to_dict())

    # ----- files -------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> "Profile":
        """Read and validate a profile file; ProfileError names the first bad field."""
        try:
            text = _file_path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ProfileError(f"{path}: not a profile (not UTF-8 text)") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ProfileError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        """Write the profile as indented JSON, atomically (temporary file, fsync, rename).

        The file gets the permissions a plain `open(path, "w")` gives (0666 less the umask): profiles are meant
        to be shared, and `tempfile.mkstemp` would make them private (0600).
        """
        path = _file_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def from_dict(cls, data: Any) -> "Profile":
        return _validate_profile_dict(data)

    def to_dict(self) -> dict[str, Any]:
        c, h = self.calibration, self.hardware
        return {
            "format": FORMAT,
            "model": dict(vars(self.model)),
            "calibration": {**vars(c), "grid": list(c.grid), "tile": list(c.tile),
                            "sampled_steps": list(c.sampled_steps), "objective": dict(c.objective),
                            "selection": dict(c.selection)},
            "schedule": {"dense_warmup_steps": self.schedule.dense_warmup_steps,
                         "dense_layers": list(self.schedule.dense_layers)},
            "hardware": {**vars(h), "points": [list(p) for p in h.points], "planning_ms": dict(h.planning_ms)},
            "buckets": [
                {
                    "start": b.start,
                    "stop": b.stop,
                    "layers": [
                        {"layer": i, "heads": [_choice_dict(choice) for choice in layer]}
                        for i, layer in enumerate(b.heads)
                    ],
                }
                for b in self.buckets
            ],
            "summary": dict(vars(self.summary)),
        }

    # ----- use ---------------------------------------------------------------------------------------------
    def policy(self) -> "ProfilePolicy":
        """The HeadPolicy `vidsparse.patch(pipe, profile=...)` runs: schedule first, then the bucket's heads."""
        if "policy" not in self._policy_cache:
            self._policy_cache["policy"] = ProfilePolicy(self)
        return self._policy_cache["policy"]

    def bucket_at(self, step: int, num_steps: int) -> Bucket:
        """The bucket holding step `step` of a run of `num_steps` steps."""
        fraction = step / num_steps
        for bucket in self.buckets:
            if bucket.start <= fraction < bucket.stop:
                return bucket
        return self.buckets[-1]

    def groups(self, bucket: int, layer: int) -> list[tuple[Strategy, list[int]]]:
        """Heads of `layer` in bucket `bucket` that share one strategy (planned and launched together)."""
        shared: dict[Strategy, list[int]] = {}
        for head, choice in enumerate(self.buckets[bucket].heads[layer]):
            shared.setdefault(choice.strategy, []).append(head)
        return list(shared.items())

    def note_grid(self, grid: tuple[int, int, int]) -> bool:
        """Log (info) when the profile is applied at a latent grid other than its calibration grid, and whether
        its tile-unit parameters are converted to the runtime's tile (see the module docstring); True if same."""
        grid, c = tuple(grid), self.calibration
        if grid == c.grid and c.tile == DEFAULT_TILE:
            return True
        converted = (
            "" if c.tile == DEFAULT_TILE else
            f"; its parameters in tiles of {c.tile} are converted to the runtime's tiles of {DEFAULT_TILE}, rounded to "
            "whole tiles"
        )
        logger.info(
            "profile calibrated at latent grid %s (%dx%d, %d frames) is applied at grid %s: windows and chunks keep "
            "their latent size, errors and densities were measured at the calibration grid%s", c.grid, c.width,
            c.height, c.frames, grid, converted,
        )
        return False


class ProfilePolicy:
    """HeadPolicy of a profile. Heads sharing a strategy get the same Strategy object, so the controller plans
    them together (one dynamic planning call per distinct strategy and layer) and launches the layer at once."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.schedule = DenseSchedule(profile.schedule.dense_warmup_steps, frozenset(profile.schedule.dense_layers))
        self._layers: list[list[list[Strategy] | None]] = []
        tile = profile.calibration.tile
        # One converted object per distinct strategy, so heads sharing a strategy still share it.
        converted: dict[Strategy, Strategy] = {}
        for bucket in profile.buckets:
            per_layer: list[list[Strategy] | None] = []
            for layer in bucket.heads:
                strategies = [converted.setdefault(c.strategy, c.strategy.retiled(tile, DEFAULT_TILE))
                              if tile != DEFAULT_TILE else c.strategy for c in layer]
                per_layer.append(None if all(isinstance(s, Dense) for s in strategies) else strategies)
            self._layers.append(per_layer)

    def strategies(self, step: int | None, num_steps: int | None, layer: int, num_heads: int) -> list[Strategy] | None:
        model = self.profile.model
        if num_heads != model.num_heads or not 0 <= layer < model.num_layers:
            raise ValueError(
                f"profile is for {model.num_layers} layers of {model.num_heads} heads, got a call of layer {layer} "
                f"with {num_heads} heads"
            )
        if self.schedule.is_dense(step, num_steps, layer):
            return None
        if step is None or num_steps is None:
            index = len(self.profile.buckets) - 1  # unknown position: the last (late-step) bucket
        else:
            index = self.profile.buckets.index(self.profile.bucket_at(step, num_steps))
        return self._layers[index][layer]


# ----- validation ----------------------------------------------------------------------------------------------
def _choice_dict(choice: HeadChoice) -> dict[str, Any]:
    return {"strategy": choice.strategy.name, "params": choice.strategy.params(), "error": choice.error,
            "error_se": choice.error_se, "error_max": choice.error_max, "error_bound": choice.error_bound,
            "recall": choice.recall,
            "density": choice.density}


def _fail(where: str, message: str) -> ProfileError:
    return ProfileError(f"{where}: {message}")


def _mapping(data: Any, where: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> Mapping[str, Any]:
    """`data` as an object with all of `keys`, perhaps some of `optional` (absent ones read as None), and no other."""
    if not isinstance(data, Mapping):
        raise _fail(where, f"must be an object, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise _fail(f"{where}.{missing[0]}" if where else missing[0], "missing")
    unknown = sorted(set(data) - set(keys) - set(optional))
    if unknown:
        raise _fail(f"{where}.{unknown[0]}" if where else unknown[0], "unknown field")
    return {**{k: None for k in optional}, **data}


def _int(data: Mapping[str, Any], key: str, where: str, minimum: int = 0) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(f"{where}.{key}", f"must be an integer >= {minimum}, got {value!r}")
    return value


def _number(data: Mapping[str, Any], key: str, where: str, low: float = 0.0, high: float = math.inf) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise _fail(f"{where}.{key}", f"must be a finite number in [{low}, {high}], got {value!r}")
    return float(value)


def _str(data: Mapping[str, Any], key: str, where: str, optional: bool = False) -> str | None:
    value = data[key]
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise _fail(f"{where}.{key}", f"must be a non-empty string, got {value!r}")
    return value


def _int_list(data: Mapping[str, Any], key: str, where: str, length: int | None = None, minimum: int = 0) -> tuple[int, ...]:
    value = data[key]
    ok = isinstance(value, list) and (length is None or len(value) == length)
    if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value):
        size = f"{length} " if length is not None else ""
        raise _fail(f"{where}.{key}", f"must be a list of {size}integers >= {minimum}, got {value!r}")
    return tuple(value)


def _file_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)) or isinstance(os.fspath(path), bytes):
        raise ValueError(f"path must be a str or os.PathLike file path, got {type(path).__name__} {path!r}")
    return Path(path)


def _validate_profile_dict(data: Any) -> Profile:
    top = _mapping(data, "", ("format", "model", "calibration", "schedule", "hardware", "buckets", "summary"))
    if top["format"] == FORMAT_V1:
        top = _from_version_1(top)
    if top["format"] == FORMAT_V2:
        top = {**top, "format": FORMAT}  # the version 3 fields are optional: absent ones read as unknown
    if top["format"] != FORMAT:
        raise _fail("format", f"unknown profile format {top['format']!r}; this vidsparse reads {FORMAT!r}, "
                              f"{FORMAT_V2!r} and {FORMAT_V1!r}")
    model = _model(top["model"])
    calibration = _calibration(top["calibration"])
    schedule = _schedule(top["schedule"], model)
    hardware = _hardware(top["hardware"])
    buckets = _buckets(top["buckets"], model)
    s = _mapping(top["summary"], "summary", ("mean_density", "predicted_speedup", "predicted_error"),
                 ("latent_error", "latent_error_bound"))
    summary = Summary(_number(s, "mean_density", "summary", 0.0, 1.0),
                      _number(s, "predicted_speedup", "summary"), _number(s, "predicted_error", "summary"),
                      _optional_number(s, "latent_error", "summary"),
                      _optional_number(s, "latent_error_bound", "summary"))
    profile = object.__new__(Profile)  # fields already checked: skip __post_init__'s re-validation
    for name, value in (("model", model), ("calibration", calibration), ("schedule", schedule),
                        ("hardware", hardware), ("buckets", buckets), ("summary", summary), ("timings", {}),
                        ("work", {}),
                        ("_policy_cache", {})):
        object.__setattr__(profile, name, value)
    return profile


def _from_version_1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A version 1 profile dict as version 2 (see the module docstring): the tile version 1 chose for the
    calibration grid, and temporal="all" for multi-diagonals reaching the last calibration frame."""
    data = json.loads(json.dumps(data))  # a deep copy of plain JSON data
    calibration = data["calibration"]
    if not isinstance(calibration, dict) or "grid" not in calibration:
        raise _fail("calibration.grid", "missing (a version 1 profile needs its grid to know its tile)")
    grid = _int_list(calibration, "grid", "calibration", 3, 1)
    calibration["tile"] = list(min(_V1_TILES, key=lambda t: math.prod(math.ceil(n / s) for n, s in zip(grid, t))))
    last = grid[0] - 1

    def upgrade(name: Any, params: Any) -> None:
        if name == "diagonal" and isinstance(params, dict) and isinstance(params.get("temporal"), int) \
                and not isinstance(params["temporal"], bool) and params["temporal"] >= last:
            params["temporal"] = "all"
        if name == "union" and isinstance(params, dict) and isinstance(params.get("parts"), list):
            for part in params["parts"]:
                if isinstance(part, dict):
                    upgrade(part.get("name"), part.get("params"))

    for bucket in data["buckets"] if isinstance(data["buckets"], list) else ():
        for layer in bucket.get("layers", ()) if isinstance(bucket, dict) else ():
            for head in layer.get("heads", ()) if isinstance(layer, dict) else ():
                if isinstance(head, dict):
                    upgrade(head.get("strategy"), head.get("params"))
    data["format"] = FORMAT_V2
    return data


def _optional_number(data: Mapping[str, Any], key: str, where: str) -> float | None:
    """A finite number >= 0, or None (null or absent: unknown)."""
    return None if data[key] is None else _number(data, key, where)


def _selection(data: Any, where: str) -> dict[str, Any]:
    if data is None:
        return dict(UNSTATED_SELECTION)
    s = _mapping(data, where, ("statistic", "margin"))
    if s["statistic"] not in ("mean", "max", "prediction"):
        raise _fail(f"{where}.statistic", f'must be "mean", "max" or "prediction", got {s["statistic"]!r}')
    return {"statistic": s["statistic"], "margin": _number(s, "margin", where)}


def _model(data: Any) -> ModelSpec:
    m = _mapping(data, "model", ("family", "name", "revision", "num_layers", "num_heads", "head_dim"))
    return ModelSpec(_str(m, "family", "model"), _str(m, "name", "model"), _str(m, "revision", "model", True),
                     _int(m, "num_layers", "model", 1), _int(m, "num_heads", "model", 1), _int(m, "head_dim", "model", 1))


def _calibration(data: Any) -> Calibration:
    keys = ("prompts", "steps", "frames", "height", "width", "grid", "tile", "seed", "sampled_steps", "rows",
            "objective", "seconds")
    c = _mapping(data, "calibration", keys, ("selection",))
    w = "calibration"
    objective = c["objective"]
    if not (isinstance(objective, Mapping) and len(objective) == 1 and set(objective) <= {"error", "target_speedup"}):
        raise _fail(f"{w}.objective", f'must be {{"error": budget}} or {{"target_speedup": x}}, got {objective!r}')
    key = next(iter(objective))
    _number(objective, key, f"{w}.objective")
    return Calibration(
        _int(c, "prompts", w, 1), _int(c, "steps", w, 1), _int(c, "frames", w, 1), _int(c, "height", w, 1),
        _int(c, "width", w, 1), _int_list(c, "grid", w, 3, 1), _int(c, "seed", w),  # type: ignore[arg-type]
        _int_list(c, "sampled_steps", w), _int(c, "rows", w, 1), {key: float(objective[key])},
        _number(c, "seconds", w), _tile(c, w), _selection(c["selection"], f"{w}.selection"),
    )


def _tile(data: Mapping[str, Any], where: str) -> tuple[int, int, int]:
    tile = _int_list(data, "tile", where, 3, 1)
    volume = math.prod(tile)
    if volume & (volume - 1) or not 16 <= volume <= 256:
        raise _fail(f"{where}.tile", f"must be (tf, th, tw) with a power-of-two volume in [16, 256], got {list(tile)}")
    return tile  # type: ignore[return-value]


def _schedule(data: Any, model: ModelSpec) -> Schedule:
    s = _mapping(data, "schedule", ("dense_warmup_steps", "dense_layers"))
    warmup = s["dense_warmup_steps"]
    if isinstance(warmup, bool) or not (isinstance(warmup, int) and warmup >= 0 or
                                        isinstance(warmup, float) and 0.0 <= warmup < 1.0):
        raise _fail("schedule.dense_warmup_steps", f"must be an integer >= 0 or a fraction in [0, 1), got {warmup!r}")
    layers = _int_list(s, "dense_layers", "schedule")
    bad = [i for i in layers if i >= model.num_layers]
    if bad:
        raise _fail("schedule.dense_layers", f"layers {bad} do not exist in a model of {model.num_layers} layers")
    return Schedule(warmup, layers)


def _hardware(data: Any) -> Hardware:
    keys = ("cost", "device", "backend", "dtype", "tokens", "heads", "head_dim", "block_size", "dense_ms", "fixed_ms",
            "ms_per_block", "points", "planning_ms")
    h = _mapping(data, "hardware", keys)
    w = "hardware"
    points = h["points"]
    if not isinstance(points, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], int) and not isinstance(p[0], bool) and p[0] >= 0
        and isinstance(p[1], (int, float)) and not isinstance(p[1], bool) and math.isfinite(p[1]) and p[1] >= 0
        for p in points
    ):
        raise _fail(f"{w}.points", f"must be a list of [blocks, ms] pairs, got {points!r}")
    if h["cost"] not in ("measured", "ideal"):
        raise _fail(f"{w}.cost", f'must be "measured" or "ideal", got {h["cost"]!r}')
    planning = h["planning_ms"]
    if not isinstance(planning, Mapping):
        raise _fail(f"{w}.planning_ms", f"must be an object of strategy name -> ms, got {planning!r}")
    for name in planning:
        _number(planning, name, f"{w}.planning_ms")
    return Hardware(
        h["cost"], _str(h, "device", w), _str(h, "backend", w), _str(h, "dtype", w), _int(h, "tokens", w, 1),  # type: ignore[arg-type]
        _int(h, "heads", w, 1), _int(h, "head_dim", w, 1), _int(h, "block_size", w, 1), _number(h, "dense_ms", w),
        _number(h, "fixed_ms", w, -math.inf), _number(h, "ms_per_block", w),
        tuple((int(b), float(ms)) for b, ms in points), {k: float(v) for k, v in planning.items()},
    )


def _buckets(data: Any, model: ModelSpec) -> tuple[Bucket, ...]:
    if not isinstance(data, list) or not data:
        raise _fail("buckets", "must be a non-empty list")
    buckets, expected_start = [], 0.0
    strategies: dict[str, Strategy] = {}  # one object per distinct strategy: heads that share it are grouped
    for i, raw in enumerate(data):
        where = f"buckets[{i}]"
        b = _mapping(raw, where, ("start", "stop", "layers"))
        start, stop = _number(b, "start", where, 0.0, 1.0), _number(b, "stop", where, 0.0, 1.0)
        if start != expected_start:
            raise _fail(f"{where}.start", f"must be {expected_start} (buckets cover [0, 1) in order), got {start}")
        if stop <= start:
            raise _fail(f"{where}.stop", f"must be greater than start {start}, got {stop}")
        expected_start = stop
        layers = b["layers"]
        if not isinstance(layers, list) or len(layers) != model.num_layers:
            count = len(layers) if isinstance(layers, list) else type(layers).__name__
            raise _fail(f"{where}.layers", f"must list the model's {model.num_layers} layers, got {count}")
        buckets.append(Bucket(start, stop, tuple(_layer(layer, f"{where}.layers[{j}]", j, model, strategies)
                                                 for j, layer in enumerate(layers))))
    if expected_start != 1.0:
        raise _fail(f"buckets[{len(data) - 1}].stop", f"the last bucket must stop at 1.0, got {expected_start}")
    return tuple(buckets)


def _layer(data: Any, where: str, index: int, model: ModelSpec, strategies: dict[str, Strategy]) -> tuple[HeadChoice, ...]:
    layer = _mapping(data, where, ("layer", "heads"))
    if layer["layer"] != index:
        raise _fail(f"{where}.layer", f"must be {index} (layers in order), got {layer['layer']!r}")
    heads = layer["heads"]
    if not isinstance(heads, list) or len(heads) != model.num_heads:
        count = len(heads) if isinstance(heads, list) else type(heads).__name__
        raise _fail(f"{where}.heads", f"must list the model's {model.num_heads} heads, got {count}")
    choices = []
    for h, raw in enumerate(heads):
        w = f"{where}.heads[{h}]"
        c = _mapping(raw, w, ("strategy", "params", "error", "recall", "density"),
                     ("error_se", "error_max", "error_bound"))
        name, params = _str(c, "strategy", w), c["params"]
        if not isinstance(params, Mapping):
            raise _fail(f"{w}.params", f"must be an object, got {params!r}")
        key = json.dumps([name, params], sort_keys=True)
        if key not in strategies:
            from .strategies import available

            if name not in available():
                raise _fail(f"{w}.strategy", f"unknown strategy {name!r}; available: {', '.join(available())}")
            try:
                strategies[key] = get(name, **params)  # type: ignore[arg-type]
            except (ValueError, TypeError) as error:
                raise _fail(f"{w}.params", str(error)) from None
        choices.append(HeadChoice(strategies[key], _number(c, "error", w), _number(c, "recall", w, 0.0, 1.0 + 1e-9),
                                  _number(c, "density", w, 0.0, 1.0), _optional_number(c, "error_se", w),
                                  _optional_number(c, "error_max", w), _optional_number(c, "error_bound", w)))
    return tuple(choices)
