"""Wrong types at the public API give a ValueError naming the argument, never a TypeError from deep inside."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidsparse.profile import Profile, ProfileError

SHIPPED_PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "tiny-wan.json"


@pytest.mark.parametrize("path", [123, None, b"profile.json", ["profile.json"]])
def test_profile_load_and_save_name_a_bad_path(path):
    with pytest.raises(ValueError, match="^path must be a str or os.PathLike"):
        Profile.load(path)
    shipped = Profile.load(SHIPPED_PROFILE)
    with pytest.raises(ValueError, match="^path must be a str or os.PathLike"):
        shipped.save(path)


def test_profile_load_of_a_binary_file_names_the_file(tmp_path):
    path = tmp_path / "video.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42\xff\xfe")
    with pytest.raises(ProfileError, match="video.mp4: not a profile"):
        Profile.load(path)
