"""A tiny runnable instance of every diffusers *modular* pipeline class of a supported family (Wan 2.1 / 2.2, LTX-Video,
LTX-2 / 2.5 and Echo, HunyuanVideo 1.5), built as a user builds one: the class on the family's blocks
(`Wan22ModularPipeline(blocks=Wan22Blocks())`; `blocks.init_pipeline()` picks the Wan 2.2 classes only from a
checkpoint's config), then `update_components(...)` with tiny models from configs (those of `tiny_pipeline` and of the
classic pipeline classes). Registered with `tiny_pipeline_of`, next to the classic classes.

    pipe, call = tiny_pipeline_of("WanModularPipeline")
    latents = pipe(**call, output="latents")

Where a text encoder cannot run offline (Wan's prompt cleaning needs ftfy, which is not a dependency; LTX-2's Gemma and
HunyuanVideo 1.5's Qwen tokenizers cannot be built from configs) its block is removed from the blocks, the modular way
of running text encoding separately, and the call passes the embeddings that block would produce. Each call runs 2 denoising steps with classifier-free guidance (the guider's conditions), except
Echo's (see `_echo`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .pipeline_classes import _builder, _clip_image_encoder, _frames, pipeline_classes, tiny_pipeline_of
from .pipelines import _WAN_TRANSFORMER, _t5_tokenizer, tiny_call, tiny_pipeline


def modular_pipeline_classes() -> list[str]:
    """Names of the diffusers modular pipeline classes `tiny_pipeline_of` builds (registered here)."""
    return [name for name in pipeline_classes() if name.endswith("ModularPipeline")]


def _init(class_name: str, blocks_name: str, components: dict[str, Any], *, without: tuple[str, ...] = ()) -> Any:
    """`class_name(blocks=<blocks_name>())` with the sub-blocks at the dotted paths `without` removed, and
    `components`."""
    import diffusers
    import diffusers.modular_pipelines

    # A deep copy: some blocks (Echo's text conditioning) share their sub-block dict between instances.
    blocks = copy.deepcopy(getattr(diffusers.modular_pipelines, blocks_name)())
    for path in without:
        *parents, name = path.split(".")
        owner = blocks
        for parent in parents:
            owner = owner.sub_blocks[parent]
        owner.sub_blocks.pop(name)
    pipe = getattr(diffusers, class_name)(blocks=blocks)
    pipe.update_components(**components)
    return pipe


def _pick(components: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: components[name] for name in names}


# ----- Wan 2.1 / 2.2 -------------------------------------------------------------------------------------------
def _wan_embeds() -> dict[str, torch.Tensor]:
    return {key: torch.randn(1, 16, _WAN_TRANSFORMER["text_dim"]) for key in ("prompt_embeds", "negative_prompt_embeds")}


#: Wan class -> (blocks, tiny_pipeline("wan") variant whose transformers it takes). 9 frames at 128 px: grid 3 x 8 x 8.
_WAN = {
    "WanModularPipeline": ("WanBlocks", "t2v"),
    "Wan22ModularPipeline": ("Wan22Blocks", "a14b"),  # two experts, boundary 0.875
    "Wan22Image2VideoModularPipeline": ("Wan22Image2VideoBlocks", "i2v"),  # condition latents in the input channels
}


@_builder(*_WAN)
def _wan(class_name: str) -> tuple[Any, dict[str, Any]]:
    blocks, variant = _WAN[class_name]
    base = tiny_pipeline("wan", variant=variant).components
    components = _pick(base, "vae", "scheduler", "transformer")
    if base.get("transformer_2") is not None:
        components["transformer_2"] = base["transformer_2"]
    call: dict[str, Any] = dict(height=128, width=128, num_frames=9, num_inference_steps=2, **_wan_embeds())
    if variant == "i2v":
        call["image"] = _frames(1)[0]
    return _init(class_name, blocks, components, without=("text_encoder",)), call


@_builder("WanImage2VideoModularPipeline")
def _wan_i2v(class_name: str) -> tuple[Any, dict[str, Any]]:
    """Wan 2.1 I2V: CLIP image tokens in cross-attention, condition latents and mask in the input channels."""
    from diffusers import WanTransformer3DModel

    base = tiny_pipeline("wan").components
    heads = _WAN_TRANSFORMER["num_attention_heads"] * _WAN_TRANSFORMER["attention_head_dim"]
    config = dict(_WAN_TRANSFORMER, in_channels=2 * _WAN_TRANSFORMER["in_channels"] + 4, image_dim=16,
                  added_kv_proj_dim=heads)
    components = dict(_pick(base, "vae", "scheduler"), **_clip_image_encoder(),
                      transformer=WanTransformer3DModel(**config).eval())
    call = dict(height=128, width=128, num_frames=9, num_inference_steps=2, image=_frames(1)[0], **_wan_embeds())
    return _init(class_name, "WanImage2VideoAutoBlocks", components, without=("text_encoder",)), call


@_builder("Wan22VaceModularPipeline")
def _wan22_vace(class_name: str) -> tuple[Any, dict[str, Any]]:
    """WanVACEPipeline's tiny VACE transformer as both experts' (the reference image is one more latent frame)."""
    vace, vace_call = tiny_pipeline_of("WanVACEPipeline")
    components = dict(_pick(vace.components, "vae", "scheduler", "transformer"))
    components["transformer_2"] = type(components["transformer"])(**components["transformer"].config).eval()
    call = _pick(vace_call, "height", "width", "num_frames", "num_inference_steps", "video", "mask",
                 "reference_images", "prompt_embeds", "negative_prompt_embeds")
    return _init(class_name, "Wan22VaceBlocks", components, without=("text_encoder",)), call


# ----- LTX-Video -----------------------------------------------------------------------------------------------
@_builder("LTXModularPipeline")
def _ltx(class_name: str) -> tuple[Any, dict[str, Any]]:
    """LTXPipeline's components (T5 text encoder with the character tokenizer); the image-to-video workflow, which
    the auto blocks pick when an image is given: 17 frames at 256 px -> 3 x 8 x 8."""
    base = tiny_pipeline("ltx").components
    components = _pick(base, "text_encoder", "tokenizer", "vae", "scheduler", "transformer")
    call = dict(prompt="a red fox", height=256, width=256, num_frames=17, num_inference_steps=2,
                max_sequence_length=32, image=_frames(1, 256)[0])
    return _init(class_name, "LTXAutoBlocks", components), call


# ----- LTX-2 / 2.5 ---------------------------------------------------------------------------------------------
def _ltx2_parts() -> tuple[dict[str, Any], dict[str, Any]]:
    """(components, call) of LTX2Pipeline's tiny pipeline without the Gemma text encoder: the call passes its stacked
    hidden states, which the blocks' connector step reads. 9 frames at 32 px -> 5 x 16 x 16 video tokens (audio stays
    dense)."""
    base, call = tiny_pipeline_of("LTX2Pipeline")
    components = _pick(base.components, "vae", "audio_vae", "connectors", "transformer", "scheduler")
    # The connector step reads only the side Gemma's tokenizer pads on (left, as the embeddings' masks are).
    components["tokenizer"] = _t5_tokenizer(64)
    components["tokenizer"].padding_side = "left"
    return components, call


@_builder("LTX2ModularPipeline", "LTX25ModularPipeline")
def _ltx2(class_name: str) -> tuple[Any, dict[str, Any]]:
    components, base_call = _ltx2_parts()
    call = _pick(base_call, "height", "width", "num_frames", "num_inference_steps", "prompt_embeds",
                 "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask")
    call.update(batch_size=1, dtype=torch.float32)  # what the removed text-encoder block also reports
    blocks = "LTX25AutoBlocks" if class_name == "LTX25ModularPipeline" else "LTX2AutoBlocks"
    return _init(class_name, blocks, components, without=("text_encoder.text_encoder", "decode")), call


@_builder("EchoModularPipeline")
def _echo(class_name: str) -> tuple[Any, dict[str, Any]]:
    """Echo (long-video DMD on the LTX-2 transformer) with two memory images: their latent frames go before the 5
    generated ones in the video tokens (7 frames of 16 x 16). It has no scheduler: its blocks step a fixed sigma
    schedule (8 steps by default, one transformer call each, no guidance)."""
    components, base_call = _ltx2_parts()
    components.pop("scheduler")
    call = dict(_pick(base_call, "height", "width", "num_frames", "prompt_embeds", "prompt_attention_mask"),
                memory_images=_frames(2, 32))
    return _init(class_name, "EchoBlocks", components, without=("text_encoder.encode", "decode")), call


# ----- HunyuanVideo 1.5 ----------------------------------------------------------------------------------------
@_builder("HunyuanVideo15ModularPipeline")
def _hunyuan15(class_name: str) -> tuple[Any, dict[str, Any]]:
    """HunyuanVideo15Pipeline's tiny components; the call passes the padded Qwen and ByT5 outputs with their masks."""
    base = tiny_pipeline("hunyuan15").components
    components = _pick(base, "vae", "scheduler", "transformer", "guider")
    return _init(class_name, "HunyuanVideo15AutoBlocks", components, without=("text_encoder",)), tiny_call("hunyuan15")
