"""The committed tiny-wan model: loads through diffusers' from_pretrained and generates a finite clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vidsparse.tiny_model as tiny_model
from vidsparse.testing.shapes import parse_prompt, prompt_vocabulary

needs_weights = pytest.mark.skipif(not (tiny_model.TINY_MODEL_DIR / "model_index.json").is_file(),
                                   reason=f"tiny-wan weights not found in {tiny_model.TINY_MODEL_DIR}")


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_model.load_tiny_wan()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_missing_weights_raise_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_model, "TINY_MODEL_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="tiny-wan weights are missing"):
        tiny_model.load_tiny_wan()


def test_prompts_are_dataset_prompts():
    facts = [parse_prompt(p) for p in tiny_model.TINY_WAN_PROMPTS]
    assert len(set(tiny_model.TINY_WAN_PROMPTS)) == len(facts)
    assert {f.colour for f in facts} >= {"red", "green", "blue", "yellow"}


@needs_weights
def test_tokenizer_knows_every_word_and_prompts_embed_distinctly(pipe):
    words = prompt_vocabulary()
    ids = pipe.tokenizer(words, add_special_tokens=False).input_ids
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(words)
    assert pipe.tokenizer.unk_token_id not in {i[0] for i in ids}
    prompts = list(tiny_model.TINY_WAN_PROMPTS[:4])
    embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=16)
    flat = embeds.flatten(1)
    distance = torch.cdist(flat, flat)
    assert bool((distance + torch.eye(len(prompts)) * 1e9).min() > 1e-3)


@needs_weights
def test_generates_a_finite_clip_of_the_expected_shape(pipe):
    call = {**tiny_model.TINY_WAN_CALL, "num_inference_steps": 2}
    prompt = tiny_model.TINY_WAN_PROMPTS[0]
    generator = torch.Generator().manual_seed(torch.initial_seed())
    video = pipe(prompt, **call, output_type="np", generator=generator).frames[0]
    assert video.shape == (call["num_frames"], call["height"], call["width"], 3)
    assert np.isfinite(video).all() and video.min() >= 0.0 and video.max() <= 1.0
    assert video.std() > 0.0
    info = pipe.transformer.config
    assert pipe.vae_scale_factor_spatial == 2 ** len(pipe.vae.config.temperal_downsample)
    assert pipe.vae_scale_factor_temporal == 2 ** sum(pipe.vae.config.temperal_downsample)
    tokens = ((call["num_frames"] - 1) // pipe.vae_scale_factor_temporal + 1) * (
        call["height"] // pipe.vae_scale_factor_spatial) * (call["width"] // pipe.vae_scale_factor_spatial)
    assert tokens // int(np.prod(info.patch_size)) >= 2048  # a long sequence: attention dominates a step
