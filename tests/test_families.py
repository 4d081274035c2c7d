"""What each family adapter reads from its model: latent grid, text tokens and their place, layer numbering.

Expected values are worked out by hand from the tiny pipelines' call arguments and VAE / patch factors, not read
back from the adapters.
"""

from __future__ import annotations

import pytest
import torch

from vidsparse.families import available_families, find_family
from vidsparse.patch import inspect_model, install, uninstall
from vidsparse.testing import TINY_CALL, tiny_call, tiny_pipeline

PROMPTS = ["a fox", "a red fox running in the snow"]


class Recorder:
    """Runs the model's own dense attention and keeps every call."""

    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, call):
        self.calls.append(call)
        return call.dense()


def record(pipe, family, variant=None, prompt=PROMPTS, target=None, **overrides) -> list:
    recorder = Recorder()
    target = pipe if target is None else target
    install(target, recorder)
    try:
        kwargs = {**tiny_call(family, variant), "output_type": "latent", **overrides}
        pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), **kwargs)
    finally:
        uninstall(target)
    return recorder.calls


@pytest.mark.parametrize(
    "family, variant, grid",
    [
        ("wan", "t2v", (3, 16, 16)),  # 9 frames -> (9-1)/4+1 = 3; 256 px / VAE 8 / patch 2 = 16
        ("wan", "ti2v", (3, 8, 8)),  # Wan 2.2 VAE 16x, patch 2
        ("cogvideox", "1.0", (3, 16, 16)),
        ("cogvideox", "1.5", (2, 16, 16)),  # 3 latent frames padded to 4 by the pipeline, frame patch 2
        ("ltx", None, (3, 16, 16)),  # 17 frames -> (17-1)/8+1 = 3; 512 px / 32
        ("mochi", None, (3, 16, 16)),  # 13 frames -> (13-1)/6+1 = 3; frames not patchified
        ("hunyuan", None, (3, 16, 16)),
    ],
)
def test_grid(family, variant, grid):
    calls = record(tiny_pipeline(family, variant=variant), family, variant, prompt=PROMPTS[1])
    assert calls and {call.layout.grid for call in calls} == {grid}


def test_hunyuan_text_last_trimmed_to_each_prompt():
    """Text follows the video; padded text keys are dropped per batch entry (Llama char tokens + <s>)."""
    calls = record(tiny_pipeline("hunyuan"), "hunyuan")
    assert {call.layout.text_position for call in calls} == {"suffix"}
    # Both prompts in one batch: the runtime splits it into one group per valid length.
    assert {(call.q.shape[0], call.layout.text_tokens) for call in calls} == {(1, len(p) + 1) for p in PROMPTS}
    steps = tiny_call("hunyuan")["num_inference_steps"]
    assert len(calls) == len(PROMPTS) * steps * inspect_model(tiny_pipeline("hunyuan")).num_layers


def test_mochi_text_last_one_call_per_batch_entry():
    """Mochi's processor keeps each entry's valid text (T5 char tokens + </s>) and calls attention per entry."""
    calls = record(tiny_pipeline("mochi"), "mochi", guidance_scale=1.0)
    assert {call.layout.text_position for call in calls} == {"suffix"}
    assert {call.q.shape[0] for call in calls} == {1}
    assert sorted({call.layout.text_tokens for call in calls}) == sorted(len(p) + 1 for p in PROMPTS)


@pytest.mark.parametrize("variant", ["1.0", "1.5"])
def test_cogvideox_text_first_padded_to_max_length(variant):
    calls = record(tiny_pipeline("cogvideox", variant=variant), "cogvideox", variant)
    assert {call.layout.text_position for call in calls} == {"prefix"}
    assert {call.layout.text_tokens for call in calls} == {tiny_call("cogvideox")["max_sequence_length"]}


@pytest.mark.parametrize("family", ["wan", "ltx"])
def test_text_in_cross_attention_is_not_patched(family):
    pipe = tiny_pipeline(family)
    calls = record(pipe, family)
    assert {call.layout.text_tokens for call in calls} == {0}
    # Cross-attention (attn2) keeps its own processor class: only self-attention was swapped.
    recorder = Recorder()
    install(pipe, recorder)
    try:
        kinds = {type(block.attn2.processor).__name__ for block in getattr(pipe.transformer, "blocks", None)
                 or pipe.transformer.transformer_blocks}
    finally:
        uninstall(pipe)
    assert not any(kind.startswith("Sparse") for kind in kinds)


def test_wan_a14b_numbers_both_experts_in_one_sequence():
    pipe = tiny_pipeline("wan", variant="a14b")
    info = inspect_model(pipe)
    assert info.layers_per_transformer == (2, 2) and info.first_layers == (0, 2)
    # Steps with timestep >= 875 run the high-noise expert (layers 0-1), later ones the low-noise one (2-3).
    calls = record(pipe, "wan", "a14b", prompt=PROMPTS[1], num_inference_steps=6)
    by_step = {}
    for call in calls:
        by_step.setdefault(call.step, set()).add(call.layer)
    assert by_step[0] == {0, 1} and by_step[5] == {2, 3}
    assert all(layers in ({0, 1}, {2, 3}) for layers in by_step.values())


def test_wan_ti2v_bare_transformer_steps_from_per_token_timesteps():
    """TI2V passes a timestep per token (0 on conditioning frames); the step counter reads the largest."""
    pipe = tiny_pipeline("wan", variant="ti2v")
    calls = record(pipe, "wan", "ti2v", prompt=PROMPTS[1], target=pipe.transformer, num_inference_steps=3)
    assert sorted({(call.step, call.num_steps) for call in calls}) == [(0, None), (1, None), (2, None)]


def test_every_family_has_a_tiny_pipeline_and_is_found():
    # Tested on their transformers: MiniMax-H3's pipelines are modular only, JoyImage Edit's needs a Qwen3-VL
    # processor (neither can be built offline).
    assert set(available_families()) - set(TINY_CALL) == {"minimax_h3", "joyimage"}
    for family in sorted(set(available_families()) & set(TINY_CALL)):
        pipe = tiny_pipeline(family)
        assert find_family(pipe.transformer).name == family
