"""Helpers of the tiny-wan training script: where the shapes are, in pixels and on the VAE's latent grid; the
recipes (shapes for tiny-wan, textures for tiny-wan-next) and their checkpoints."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_tiny_wan.py"


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("train_tiny_wan", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_shape_mask_marks_exactly_the_pixels_off_the_background(train):
    rng = np.random.default_rng()
    clip = torch.full((1, 3, 5, 16, 16), float(rng.uniform(-1, 1)))
    drawn = torch.from_numpy(rng.random((5, 16, 16)) < 0.1)  # well under half: the median stays background
    clip[0, int(rng.integers(3)), drawn] += 0.5
    assert torch.equal(train.shape_mask(clip)[0, 0], drawn)


def test_latent_mask_follows_the_causal_vae_grid(train):
    """Latent frame 0 <- frame 0, latent frame k <- frames 2k-1, 2k; latent pixel (i, j) <- pixels 2i..2i+1."""
    rng = np.random.default_rng()
    frames, size = 9, 12
    drawn = torch.from_numpy(rng.random((2, frames, size, size)) < 0.05)
    got = train.latent_mask(drawn[:, None])
    assert got.shape == (2, 1, 1 + (frames - 1) // 2, size // 2, size // 2)
    for b in range(2):
        for k in range(got.shape[2]):
            sources = [0] if k == 0 else [2 * k - 1, 2 * k]
            for i in range(size // 2):
                for j in range(size // 2):
                    expected = bool(drawn[b, sources, 2 * i:2 * i + 2, 2 * j:2 * j + 2].any())
                    assert bool(got[b, 0, k, i, j]) == expected


def test_vae_stages_cover_every_step(train):
    bounds = np.cumsum([steps for _, _, steps in train.VAE_STAGES])
    for (frames, batch, _), end in zip(train.VAE_STAGES, bounds):
        assert train.vae_stage(int(end) - 1) == (frames, batch)
    assert train.vae_stage(int(bounds[-1]) + 10) == train.VAE_STAGES[-1][:2]
    stages = train.RECIPES["tiny-wan-next"].vae_stages
    assert train.vae_stage(stages[0][2], stages) == stages[1][:2]


def test_recipes_draw_seeded_clips_with_their_masks(train):
    for name, recipe in train.RECIPES.items():
        first = train.pool_clip(recipe, 0, 5)
        prompt, video, mask = first
        assert video.shape == (train.FRAMES, train.SIZE, train.SIZE, 3) and video.dtype == np.uint8
        assert mask.shape == video.shape[:3] and mask.dtype == bool and mask.mean() < 0.5
        assert set(prompt.split()) <= set(recipe.vocabulary()), name
        again = train.pool_clip(recipe, 0, 5)
        assert again[0] == prompt and np.array_equal(again[1], video) and np.array_equal(again[2], mask)
        assert not np.array_equal(train.pool_clip(recipe, 0, 6)[1], video)
        assert recipe.score_clip(video, prompt)["adherence"] >= 2 / 3, name  # ground truth adheres


def test_next_model_config_is_wider_and_small(train):
    from diffusers import WanTransformer3DModel

    config = train.RECIPES["tiny-wan-next"].transformer_config
    assert config["num_attention_heads"] * config["attention_head_dim"] == 128 and 4 <= config["num_layers"] <= 6
    with torch.device("meta"):  # shapes only: no initialisation cost
        params = sum(p.numel() for p in WanTransformer3DModel(**config).parameters())
    assert params * 4 < 25e6  # float32 weights under the 25 MB budget


def test_checkpoint_of_another_recipe_is_refused_and_model_recipe_reads_training_json(train, tmp_path):
    args = train.main.__globals__["argparse"].Namespace(
        recipe="tiny-wan", seed=0, vae_lr=1e-3, steps=1, batch=1, lr=1e-3, lr_decay_steps=0, ema=0.9,
        shape_weight=None, pool_size=2, pool_init=1, device="cpu")
    state = train.Run(args).state_dict()
    assert state["args"]["recipe"] == "tiny-wan"
    with pytest.raises(SystemExit, match="recipe 'tiny-wan'"):
        train.Run(dict_to_args(args, recipe="tiny-wan-next")).load_state_dict(state)
    assert train.model_recipe(tmp_path) is train.RECIPES["tiny-wan"]
    (tmp_path / "training.json").write_text(json.dumps({"recipe": "tiny-wan-next"}))
    assert train.model_recipe(tmp_path) is train.RECIPES["tiny-wan-next"]


def dict_to_args(args, **changes):
    return type(args)(**{**vars(args), **changes})


def test_vae_from_starts_the_transformer_phase_on_that_runs_vae_and_latent_statistics(train, tmp_path):
    """A 2x64-head run on tiny-wan-next's committed VAE: no VAE step is taken, the VAE is that state's, and the latent
    statistics it measures are the ones that run measured (same clips, same VAE); a state of other data is refused."""
    source = Path(__file__).resolve().parents[1] / "models" / "tiny-wan-next" / "training_state.pt"
    common = ["--out", str(tmp_path), "--steps", "1", "--pool-init", "1", "--pool-size", "2", "--checkpoint-minutes", "60"]
    assert train.main(["train", "--recipe", "tiny-wan-next-2x64", "--vae-from", str(source), *common]) == 0
    state, before = (torch.load(p, weights_only=False) for p in (tmp_path / "checkpoint.pt", source))
    assert state["phase"] == "flow" and state["step"] == 1
    assert not (tmp_path / "log.jsonl").read_text().count('"phase": "vae"')
    assert all(torch.equal(state["vae"][k], v) for k, v in before["vae"].items())
    np.testing.assert_allclose(state["stats"], before["stats"], atol=1e-5)
    heads = {k: v.shape for k, v in state["transformer"].items()}
    assert heads == {k: v.shape for k, v in before["transformer"].items()}  # same width, regrouped into 2 heads
    torch.save(state | {"args": {"recipe": "tiny-wan"}}, tmp_path / "shapes.pt")
    for refused, why in (("shapes.pt", "other data"), ("vae_done.pt", "not finished its VAE phase")):
        with pytest.raises(SystemExit, match=why):
            train.main(["train", "--recipe", "tiny-wan-next-2x64", "--vae-from", str(tmp_path / refused), *common])
