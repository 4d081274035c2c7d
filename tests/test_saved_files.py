"""Files written for people to share get the permissions a plain `open(path, "w")` gives under the user's umask,
not a temporary file's private 0600. (Reports and plots are written with Path.write_text and savefig, plain opens.)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from vidsparse.evaluate.video import write_mp4
from vidsparse.profile import Profile

SHIPPED_PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "tiny-wan.json"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o027, 0o002], ids=lambda m: f"umask{m:03o}")
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _plain_open_mode(folder: Path) -> int:
    """The reference: what open(path, "w") gives under the current umask."""
    with open(folder / "plain.txt", "w") as f:
        f.write("x")
    return _mode(folder / "plain.txt")


def test_saved_profile_has_the_mode_of_a_plain_open(umask, tmp_path):
    path = tmp_path / "shared" / "profile.json"
    Profile.load(SHIPPED_PROFILE).save(path)
    assert _mode(path) == _plain_open_mode(tmp_path) == 0o666 & ~umask
    assert Profile.load(path) == Profile.load(SHIPPED_PROFILE)
    assert [p.name for p in path.parent.iterdir()] == ["profile.json"]  # no temporary file left behind


def test_saved_video_has_the_mode_of_a_plain_open(umask, tmp_path):
    path = write_mp4(tmp_path / "clip.mp4", np.zeros((2, 16, 16, 3), np.uint8), fps=4)
    assert _mode(path) == _plain_open_mode(tmp_path)

