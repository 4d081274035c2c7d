"""Tiny runnable diffusers pipelines for every supported family, built from configs with random weights.

Nothing is downloaded: text encoders are built from tiny configs (UMT5, T5, Llama, CLIP) and tokenizers are
character-level `tokenizers` models built in memory, so `pipe("a prompt", ...)` works like with a real model.
Sizes are chosen so that one pipeline call with 2-3 steps takes well under a second of transformer time on CPU
while the latent grid still spans several 128-token tiles (so sparse plans differ from dense ones).

    pipe = tiny_pipeline("wan")                       # WanPipeline, 2 layers, 2 heads of 16
    pipe = tiny_pipeline("wan", variant="a14b")       # Wan 2.2 A14B-like: transformer + transformer_2
    pipe = tiny_pipeline("cogvideox", variant="1.5")  # patch_size_t=2, rotary embeddings
    pipe = tiny_pipeline("hunyuan", num_layers=1)     # keyword overrides go to the transformer config

`TINY_CALL[family]` holds call arguments (frames, height, width, steps) that suit each tiny pipeline.
"""

from __future__ import annotations

import string
from typing import Any, Callable

import torch

_BUILDERS: dict[str, Callable[..., Any]] = {}

#: Arguments for a quick call of each tiny pipeline (latent grids of several tiles, 2 denoising steps).
TINY_CALL: dict[str, dict[str, Any]] = {}


def _builder(family: str, call: dict[str, Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _BUILDERS[family] = fn
        TINY_CALL[family] = call
        return fn

    return register


def tiny_pipeline(family: str, *, variant: str | None = None, seed: int = 0, **overrides: Any) -> Any:
    """A runnable tiny pipeline of `family` ("wan", "hunyuan", "cogvideox", "ltx", "mochi") on CPU, float32.

    Args:
        variant: family-specific flavour (wan: "t2v" or "a14b"; cogvideox: "1.0" or "1.5"); None = the first.
        seed: seed of the random weights (the global RNG state is left as it was).
        overrides: transformer config entries to change (e.g. num_layers=1).
    """
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; tiny pipelines exist for {', '.join(sorted(_BUILDERS))}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = _BUILDERS[family](variant, overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _char_tokenizer(*, specials: dict[str, str], max_length: int, template: str | None = None) -> Any:
    """A character-level fast tokenizer: every printable character is a token; specials first in the vocab.

    Args:
        specials: role -> token, roles among "pad", "eos", "bos", "unk" (unk required).
        template: post-processing template, e.g. "$A </s>" (T5) or "<s> $A" (Llama); None adds nothing.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = list(dict.fromkeys(specials.values())) + [c for c in string.printable if not c.isspace()] + [" "]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk"]))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    if template is not None:
        used = [t for t in specials.values() if t in template.split()]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(t, vocab[t]) for t in used]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_length, **{f"{role}_token": t for role, t in specials.items()}
    )


def _t5_tokenizer(max_length: int) -> Any:
    return _char_tokenizer(specials={"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}, max_length=max_length,
                           template="$A </s>")


# ----- Wan ------------------------------------------------------------------------------------------------------
_WAN_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
    text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    rope_max_seq_len=64,
)


def _wan_vae() -> Any:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )


def _umt5_encoder() -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    return UMT5EncoderModel(config).eval()


@_builder("wan", dict(num_frames=9, height=256, width=256, num_inference_steps=2, max_sequence_length=16))
def _wan(variant: str | None, overrides: dict[str, Any]) -> Any:
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    variant = variant or "t2v"
    if variant not in ("t2v", "a14b"):
        raise ValueError(f"wan variant must be 't2v' or 'a14b', got {variant!r}")
    config = {**_WAN_TRANSFORMER, **overrides}
    experts = 2 if variant == "a14b" else 1
    transformers = [WanTransformer3DModel(**config).eval() for _ in range(experts)]
    return WanPipeline(
        tokenizer=_t5_tokenizer(64),
        text_encoder=_umt5_encoder(),
        vae=_wan_vae().eval(),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
        transformer=transformers[0],
        transformer_2=transformers[1] if experts == 2 else None,
        # Wan 2.2 A14B switches from the high-noise to the low-noise expert at 0.875 * 1000 timesteps.
        boundary_ratio=0.875 if experts == 2 else None,
    )
