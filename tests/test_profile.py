"""Profile files: round trip, validation errors naming the field, atomic save, the policy, grid portability."""

from __future__ import annotations

import copy
import json
import logging
import os
import random

import pytest

from vidsparse.profile import FORMAT, Profile, ProfileError
from vidsparse.strategies import get

CHOICES = [
    ("dense", {}),
    ("skip", {}),
    ("diagonal", {"width": 1}),
    ("diagonal", {"width": None, "temporal": 4, "column": 1}),
    ("stripe", {"first_frames": 1}),
    ("neighborhood", {"window": [3, 3, 3]}),
    ("draft", {"keep_ratio": 0.25}),
    ("vmoba", {"partition": "2d", "simsum_threshold": 0.5}),
    ("union", {"parts": [{"name": "diagonal", "params": {"width": 0}}, {"name": "stripe", "params": {"sinks": 2}}]}),
]


def make_dict(layers: int = 3, heads: int = 4, buckets: int = 2) -> dict:
    """A valid profile dict with random head choices and numbers."""
    rng = random.Random(random.getrandbits(32))
    edges = [0.0, 0.6, 1.0] if buckets == 2 else [0.0, 1.0]
    return {
        "format": FORMAT,
        "model": {"family": "wan", "name": "tiny", "revision": "abc", "num_layers": layers, "num_heads": heads,
                  "head_dim": 16},
        "calibration": {"prompts": 2, "steps": 10, "frames": 9, "height": 256, "width": 256, "grid": [3, 16, 16],
                        "tile": [1, 8, 16], "seed": 0, "sampled_steps": [2, 5, 9], "rows": 64, "objective": {"error": 0.05},
                        "selection": {"statistic": "mean", "margin": 2.0}, "seconds": 1.5},
        "schedule": {"dense_warmup_steps": 0.2, "dense_layers": [0]},
        "hardware": {"cost": "measured", "device": "cpu", "backend": "gather", "dtype": "float32", "tokens": 768,
                     "heads": heads, "head_dim": 16, "block_size": 128, "dense_ms": 1.0, "fixed_ms": 0.1,
                     "ms_per_block": 0.01, "points": [[10, 0.2], [40, 0.5]], "planning_ms": {"draft": 0.3}},
        "buckets": [
            {"start": edges[b], "stop": edges[b + 1], "layers": [
                {"layer": layer, "heads": [
                    {"strategy": name, "params": copy.deepcopy(params), "error": rng.random() * 0.1,
                     "error_se": rng.choice([None, rng.random() * 0.01]), "error_max": rng.random() * 0.2,
                     "error_bound": rng.choice([None, rng.random() * 0.2]), "recall": rng.random(),
                     "density": rng.random()}
                    for name, params in (rng.choice(CHOICES) for _ in range(heads))
                ]} for layer in range(layers)
            ]} for b in range(len(edges) - 1)
        ],
        "summary": {"mean_density": 0.5, "predicted_speedup": 1.7, "predicted_error": 0.03, "latent_error": 0.08,
                    "latent_error_bound": 0.1},
    }


def test_round_trip(tmp_path):
    data = make_dict()
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    profile = Profile.load(path)
    expected = copy.deepcopy(data)  # the same data, with every strategy's parameters spelled out in full
    for bucket in expected["buckets"]:
        for layer in bucket["layers"]:
            for head in layer["heads"]:
                head["params"] = get(head["strategy"], **head["params"]).params()
    assert profile.to_dict() == expected
    for b, bucket in enumerate(data["buckets"]):
        for layer in bucket["layers"]:
            for h, head in enumerate(layer["heads"]):
                assert profile.buckets[b].heads[layer["layer"]][h].strategy == get(head["strategy"], **head["params"])
    out = tmp_path / "again.json"
    profile.save(out)
    again = Profile.load(out)
    assert again == profile
    assert json.loads(out.read_text()) == profile.to_dict()


def _broken(mutate):
    data = make_dict()
    mutate(data)
    return data


def _head(data):
    return data["buckets"][1]["layers"][2]["heads"][3]


BROKEN = {
    "format": (lambda d: d.update(format="vidsparse.profile/4"), "format"),
    "statistic": (lambda d: d["calibration"]["selection"].update(statistic="p99"), "calibration.selection.statistic"),
    "margin": (lambda d: d["calibration"]["selection"].update(margin=-1), "calibration.selection.margin"),
    "error_se": (lambda d: _head(d).update(error_se="small"), "buckets[1].layers[2].heads[3].error_se"),
    "latent_error": (lambda d: d["summary"].update(latent_error=-0.1), "summary.latent_error"),
    "error_bound": (lambda d: _head(d).update(error_bound=float("nan")), "buckets[1].layers[2].heads[3].error_bound"),
    "latent_error_bound": (lambda d: d["summary"].update(latent_error_bound="0.1"), "summary.latent_error_bound"),
    "tile volume": (lambda d: d["calibration"].update(tile=[1, 8, 12]), "calibration.tile"),
    "tile missing": (lambda d: d["calibration"].pop("tile"), "calibration.tile"),
    "missing model": (lambda d: d.pop("model"), "model"),
    "unknown field": (lambda d: d["summary"].update(extra=1), "summary.extra"),
    "unknown strategy": (lambda d: _head(d).update(strategy="__import__('os')"), "buckets[1].layers[2].heads[3].strategy"),
    "bad params": (lambda d: _head(d).update(strategy="diagonal", params={"width": -1}),
                   "buckets[1].layers[2].heads[3].params"),
    "unknown param": (lambda d: _head(d).update(strategy="draft", params={"radius": 2}),
                      "buckets[1].layers[2].heads[3].params"),
    "params not an object": (lambda d: _head(d).update(params=[1]), "buckets[1].layers[2].heads[3].params"),
    "layer count": (lambda d: d["buckets"][0]["layers"].pop(), "buckets[0].layers"),
    "head count": (lambda d: d["buckets"][1]["layers"][1]["heads"].pop(), "buckets[1].layers[1].heads"),
    "model heads": (lambda d: d["model"].update(num_heads=5), "buckets[0].layers[0].heads"),
    "layer order": (lambda d: d["buckets"][0]["layers"][1].update(layer=2), "buckets[0].layers[1].layer"),
    "density range": (lambda d: _head(d).update(density=1.5), "buckets[1].layers[2].heads[3].density"),
    "error type": (lambda d: _head(d).update(error="small"), "buckets[1].layers[2].heads[3].error"),
    "bucket gap": (lambda d: d["buckets"][1].update(start=0.7), "buckets[1].start"),
    "bucket end": (lambda d: d["buckets"][1].update(stop=0.9), "buckets[1].stop"),
    "warmup": (lambda d: d["schedule"].update(dense_warmup_steps=1.5), "schedule.dense_warmup_steps"),
    "dense layer": (lambda d: d["schedule"].update(dense_layers=[7]), "schedule.dense_layers"),
    "grid": (lambda d: d["calibration"].update(grid=[3, 16]), "calibration.grid"),
    "objective": (lambda d: d["calibration"].update(objective={"speed": 2}), "calibration.objective"),
    "cost": (lambda d: d["hardware"].update(cost="guessed"), "hardware.cost"),
    "points": (lambda d: d["hardware"].update(points=[[1]]), "hardware.points"),
    "num_layers": (lambda d: d["model"].update(num_layers=0), "model.num_layers"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_errors_name_the_field(tmp_path, case):
    mutate, field = BROKEN[case]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(_broken(mutate)))
    with pytest.raises(ProfileError) as info:
        Profile.load(path)
    assert str(info.value).startswith(f"{field}:"), str(info.value)
    assert isinstance(info.value, ValueError)


def test_wrong_json(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(make_dict())[:-20])
    with pytest.raises(ProfileError, match="not valid JSON"):
        Profile.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(ProfileError, match="must be an object"):
        Profile.load(path)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    first = Profile.from_dict(make_dict())
    first.save(path)
    before = path.read_bytes()
    second = Profile.from_dict(make_dict())
    assert second != first

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", crash)  # the process dies after writing part of the data, before the rename
    with pytest.raises(OSError, match="disk gone"):
        second.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]  # no temporary file left behind
    monkeypatch.undo()
    second.save(path)
    assert Profile.load(path) == second


def test_policy_schedule_buckets_and_groups():
    data = make_dict(layers=3, heads=4)
    data["schedule"] = {"dense_warmup_steps": 2, "dense_layers": [0]}
    heads = data["buckets"][1]["layers"][1]["heads"]
    heads[0].update(strategy="diagonal", params={"width": 1})
    heads[2].update(strategy="diagonal", params={"width": 1})
    heads[1].update(strategy="draft", params={"keep_ratio": 0.25})
    heads[3].update(strategy="dense", params={})
    profile = Profile.from_dict(data)
    policy = profile.policy()
    assert policy.strategies(1, 10, 1, 4) is None  # warm-up
    assert policy.strategies(5, 10, 0, 4) is None  # dense layer
    for step, bucket in ((2, 0), (5, 0), (6, 1), (9, 1)):
        got = policy.strategies(step, 10, 2, 4)
        expected = [c.strategy for c in profile.buckets[bucket].heads[2]]
        assert got is None and all(s.name == "dense" for s in expected) or got == expected
    late = policy.strategies(8, 10, 1, 4)
    assert late[0] is late[2]  # heads sharing a strategy share one object: planned and launched together
    assert [s.name for s in late] == ["diagonal", "draft", "diagonal", "dense"]
    assert profile.groups(1, 1) == [(late[0], [0, 2]), (late[1], [1]), (late[3], [3])]
    # A run with another number of steps uses the same fractions.
    assert policy.strategies(24, 40, 1, 4) == late
    with pytest.raises(ValueError, match="4 heads"):
        policy.strategies(8, 10, 1, 3)


def test_all_dense_layer_runs_dense():
    data = make_dict(layers=2, heads=2, buckets=1)
    data["schedule"] = {"dense_warmup_steps": 0, "dense_layers": []}
    for head in data["buckets"][0]["layers"][1]["heads"]:
        head.update(strategy="dense", params={})
    policy = Profile.from_dict(data).policy()
    assert policy.strategies(3, 10, 1, 2) is None


def test_note_grid_logs_other_grid(caplog):
    profile = Profile.from_dict(make_dict())
    with caplog.at_level(logging.INFO, logger="vidsparse.profile"):
        assert profile.note_grid((3, 16, 16))
        assert not caplog.records
        assert not profile.note_grid((5, 30, 52))
    assert "(5, 30, 52)" in caplog.text and caplog.records[0].levelno == logging.INFO
    assert "converted" not in caplog.text  # the profile's tile is the runtime's


def version_1(data: dict) -> dict:
    """The same profile as a version 1 file: no tile, multi-diagonals over all frames spelled as the last frame."""
    data = copy.deepcopy(data)
    data["format"] = "vidsparse.profile/1"
    del data["calibration"]["tile"]
    return data


def test_version_1_files_load_with_their_tile_and_all_frames():
    data = make_dict(layers=2, heads=2, buckets=1)
    data["calibration"]["grid"] = [21, 30, 52]  # version 1 chose tile (2, 16, 4) here (the least padded of seven)
    heads = data["buckets"][0]["layers"][1]["heads"]
    heads[0].update(strategy="diagonal", params={"width": None, "temporal": 20, "column": 0})  # 20 = last frame
    heads[1].update(strategy="union", params={"parts": [
        {"name": "neighborhood", "params": {"window": [3, 3, 3]}},
        {"name": "diagonal", "params": {"width": 0, "temporal": 3, "column": 1}}]})
    profile = Profile.from_dict(version_1(data))
    assert profile.calibration.tile == (2, 16, 4)
    assert profile.buckets[0].heads[1][0].strategy == get("diagonal", width=None, temporal="all", column=0)
    assert profile.to_dict()["format"] == FORMAT == "vidsparse.profile/3"
    # Applied with the runtime's tile (1, 8, 16): the same latent extents, rounded to whole tiles.
    neighborhood, diagonal = profile.policy().strategies(5, 10, 1, 2)[1].parts
    assert neighborhood.window == (6, 6, 1)  # 6 frames x 48 rows x 12 -> 16 columns
    assert diagonal.temporal == 3 and diagonal.column == 2  # a short multi-diagonal stays 3 frames
    # Saved and loaded again it is a version 3 file with the same content.
    assert Profile.from_dict(profile.to_dict()) == profile


def test_version_2_files_load_with_the_new_fields_unknown():
    """Version 2 had no standard errors, tail errors, selection rule or latent error: they load as unknown (None)
    and the selection as version 2's profiler made it (mean error, no margin); a version 3 file may omit them."""
    data = make_dict(layers=2, heads=2, buckets=1)
    for head in data["buckets"][0]["layers"][1]["heads"]:
        del head["error_se"], head["error_max"], head["error_bound"]
    del data["calibration"]["selection"], data["summary"]["latent_error"], data["summary"]["latent_error_bound"]
    for version in ("vidsparse.profile/2", FORMAT):
        profile = Profile.from_dict({**data, "format": version})
        assert profile.calibration.selection == {"statistic": "mean", "margin": 0.0}
        assert profile.summary.latent_error is None and profile.summary.latent_error_bound is None
        head = profile.buckets[0].heads[1][0]
        assert head.error_se is None and head.error_max is None and head.error_bound is None
        assert head.error == data["buckets"][0]["layers"][1]["heads"][0]["error"]
        saved = profile.to_dict()
        assert saved["format"] == FORMAT and saved["buckets"][0]["layers"][1]["heads"][0]["error_se"] is None
        assert Profile.from_dict(saved) == profile
