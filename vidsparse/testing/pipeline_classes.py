"""A tiny runnable pipeline for every diffusers pipeline class of the Wan (with SkyReels V2 and ChronoEdit), LTX-Video,
CogVideoX and HunyuanVideo families, beyond the text-to-video ones of `pipelines.py`: image-, video- and
control-conditioned variants.

    pipe, call = tiny_pipeline_of("WanVACEPipeline")
    pipe(**call, output_type="latent")

Components come from the family's tiny text-to-video pipeline (`tiny_pipeline`), with a transformer of the same
tiny size where a variant needs other input channels or another transformer class. Wan-family calls pass random
prompt embeddings: diffusers 0.42's Wan and SkyReels pipelines clean prompts with ftfy unconditionally, and ftfy
is not a dependency. Wan and LTX variants use small frames (128 and 256 px, grid 3 x 8 x 8 or more): their VAE
encodes the condition on every call, and the grid still spans several 128-token tiles.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .pipelines import _WAN_TRANSFORMER, tiny_pipeline

_BUILDERS: dict[str, Callable[[], tuple[Any, dict[str, Any]]]] = {}


def _builder(*class_names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in class_names:
            _BUILDERS[name] = lambda name=name: fn(name)
        return fn

    return register


def pipeline_classes() -> list[str]:
    """Names of the diffusers pipeline classes `tiny_pipeline_of` builds."""
    return sorted(_BUILDERS)


def tiny_pipeline_of(class_name: str, *, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """(pipeline, call arguments) for a tiny instance of the diffusers pipeline class `class_name` (CPU, float32).

    The call arguments hold the conditioning inputs, sizes and 2 denoising steps; add `output_type="latent"` to
    skip decoding. The global RNG state is left as it was.
    """
    if class_name not in _BUILDERS:
        raise ValueError(f"class_name {class_name!r} has no tiny pipeline; available: {', '.join(pipeline_classes())}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe, call = _BUILDERS[class_name]()
    pipe.set_progress_bar_config(disable=True)
    return pipe, call


def _frames(count: int, size: int = 128, mode: str = "RGB") -> list[Any]:
    """`count` distinct PIL frames of `size` x `size` pixels (a moving gradient)."""
    from PIL import Image

    ramp = torch.linspace(0, 255, size)
    frames = []
    for index in range(count):
        value = ((ramp[None, :] + ramp[:, None] + 16 * index) % 256).to(torch.uint8)
        rgb = torch.stack([value, value.flip(1), value.T], -1).numpy()
        frames.append(Image.fromarray(rgb if mode == "RGB" else rgb[..., 0], mode=mode))
    return frames


def _diffusers(name: str) -> Any:
    import diffusers

    return getattr(diffusers, name)


def _config(model: Any) -> dict[str, Any]:
    """A model's config as constructor arguments (without `_use_default_values`, which would reset changed ones)."""
    return {key: value for key, value in model.config.items() if not key.startswith("_")}


# ----- Wan and SkyReels V2 -------------------------------------------------------------------------------------
def _wan_embeds(text_dim: int) -> dict[str, torch.Tensor]:
    return {"prompt": None, "prompt_embeds": torch.randn(1, 16, text_dim),
            "negative_prompt_embeds": torch.randn(1, 16, text_dim)}


def _clip_image_encoder(hidden: int = 16) -> dict[str, Any]:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=hidden, projection_dim=hidden, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, intermediate_size=32, patch_size=8)
    return {"image_encoder": CLIPVisionModelWithProjection(config).eval(),
            "image_processor": CLIPImageProcessor(crop_size=32, size=32)}


@_builder(
    "WanVideoToVideoPipeline", "SkyReelsV2Pipeline", "SkyReelsV2DiffusionForcingPipeline",
    "SkyReelsV2DiffusionForcingImageToVideoPipeline", "SkyReelsV2DiffusionForcingVideoToVideoPipeline",
)
def _wan_like(class_name: str) -> tuple[Any, dict[str, Any]]:
    """Pipelines taking WanPipeline's components (SkyReels V2 with its own transformer class of the same shape)."""
    base = tiny_pipeline("wan").components
    components = {name: base[name] for name in ("tokenizer", "text_encoder", "vae", "scheduler", "transformer")}
    call: dict[str, Any] = dict(height=128, width=128, num_frames=9, num_inference_steps=2, guidance_scale=3.0,
                                **_wan_embeds(_WAN_TRANSFORMER["text_dim"]))
    if class_name.startswith("SkyReels"):
        components["transformer"] = _diffusers("SkyReelsV2Transformer3DModel")(**_WAN_TRANSFORMER).eval()
        if "DiffusionForcing" in class_name:
            call.update(base_num_frames=9)
    if class_name.endswith("VideoToVideoPipeline"):
        call.pop("num_frames")
        call["video"] = _frames(9)
    if class_name == "SkyReelsV2DiffusionForcingVideoToVideoPipeline":
        call["num_frames"] = 9  # frames generated after the conditioning video
        call["overlap_history"] = 5
    if class_name == "SkyReelsV2DiffusionForcingImageToVideoPipeline":
        call["image"] = _frames(1)[0]
    return _diffusers(class_name)(**components), call


@_builder("SkyReelsV2ImageToVideoPipeline")
def _skyreels_i2v(class_name: str) -> tuple[Any, dict[str, Any]]:
    base = tiny_pipeline("wan").components
    image = _clip_image_encoder()
    # noise latents + condition latents + the 4-channel first-frame mask; CLIP image tokens in cross-attention
    config = dict(_WAN_TRANSFORMER, in_channels=2 * _WAN_TRANSFORMER["in_channels"] + 4, image_dim=16,
                  added_kv_proj_dim=_WAN_TRANSFORMER["num_attention_heads"] * _WAN_TRANSFORMER["attention_head_dim"])
    pipe = _diffusers(class_name)(
        transformer=_diffusers("SkyReelsV2Transformer3DModel")(**config).eval(), **image,
        **{name: base[name] for name in ("tokenizer", "text_encoder", "vae", "scheduler")},
    )
    call = dict(height=128, width=128, num_frames=9, num_inference_steps=2, guidance_scale=3.0, image=_frames(1)[0],
                **_wan_embeds(_WAN_TRANSFORMER["text_dim"]))
    return pipe, call


@_builder("WanVACEPipeline")
def _wan_vace(class_name: str) -> tuple[Any, dict[str, Any]]:
    base = tiny_pipeline("wan").components
    z = base["vae"].config.z_dim
    # Control input: inactive and reactive video latents (2 z) and the 8 x 8-pixel mask folded into 64 channels.
    transformer = _diffusers("WanVACETransformer3DModel")(**_WAN_TRANSFORMER, vace_layers=[0, 1], vace_in_channels=2 * z + 64)
    pipe = _diffusers(class_name)(transformer=transformer.eval(), **{
        name: base[name] for name in ("tokenizer", "text_encoder", "vae", "scheduler")})
    call = dict(height=128, width=128, num_frames=9, num_inference_steps=2, guidance_scale=3.0, video=_frames(9),
                mask=_frames(9, mode="L"), reference_images=_frames(1), **_wan_embeds(_WAN_TRANSFORMER["text_dim"]))
    return pipe, call


@_builder("WanAnimatePipeline")
def _wan_animate(class_name: str) -> tuple[Any, dict[str, Any]]:
    base = tiny_pipeline("wan").components
    latent = _WAN_TRANSFORMER["in_channels"]
    config = {key: value for key, value in _WAN_TRANSFORMER.items() if key != "in_channels"}
    transformer = _diffusers("WanAnimateTransformer3DModel")(
        **config, in_channels=2 * latent + 4, latent_channels=latent, image_dim=16,
        motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16}, motion_encoder_size=16, motion_style_dim=8,
        motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16, face_encoder_num_heads=2,
        inject_face_latents_blocks=1,
    )
    pipe = _diffusers(class_name)(transformer=transformer.eval(), **_clip_image_encoder(), **{
        name: base[name] for name in ("tokenizer", "text_encoder", "vae", "scheduler")})
    call = dict(height=128, width=128, segment_frame_length=9, num_inference_steps=2, guidance_scale=1.0,
                image=_frames(1)[0], pose_video=_frames(9), face_video=_frames(9, size=16),
                prev_segment_conditioning_frames=1, **_wan_embeds(_WAN_TRANSFORMER["text_dim"]))
    return pipe, call


@_builder("ChronoEditPipeline")
def _chronoedit(class_name: str) -> tuple[Any, dict[str, Any]]:
    """WanPipeline's tokenizer, text encoder and VAE with ChronoEdit's transformer (input channels: noise, condition
    latents and the 4-channel first-frame mask; CLIP image tokens in cross-attention). Temporal reasoning on: 9 frames
    (3 latent frames) at the first step, then the pipeline keeps the input image's and the edit's latent frames."""
    base = tiny_pipeline("wan").components
    config = dict(_WAN_TRANSFORMER, in_channels=2 * _WAN_TRANSFORMER["in_channels"] + 4, image_dim=16,
                  added_kv_proj_dim=_WAN_TRANSFORMER["num_attention_heads"] * _WAN_TRANSFORMER["attention_head_dim"])
    pipe = _diffusers(class_name)(
        transformer=_diffusers("ChronoEditTransformer3DModel")(**config).eval(), **_clip_image_encoder(),
        **{name: base[name] for name in ("tokenizer", "text_encoder", "vae", "scheduler")},
    )
    # Its processor takes the last 512 cross-attention tokens as the text (a hard-coded length), the rest as the image.
    text = {key: torch.randn(1, 512, _WAN_TRANSFORMER["text_dim"])
            for key in ("prompt_embeds", "negative_prompt_embeds")}
    # 256 px: the two-frame calls (2 x 16 x 16 tokens) still span several tiles.
    call = dict(height=256, width=256, num_frames=9, num_inference_steps=2, guidance_scale=3.0,
                image=_frames(1, 256)[0], enable_temporal_reasoning=True, num_temporal_reasoning_steps=1, **text)
    return pipe, call


# ----- LTX-Video ------------------------------------------------------------------------------------------------
@_builder("LTXImageToVideoPipeline", "LTXConditionPipeline", "LTXI2VLongMultiPromptPipeline")
def _ltx(class_name: str) -> tuple[Any, dict[str, Any]]:
    """LTXPipeline's components (32x spatial VAE: 256 px -> 8 x 8 tokens; 17 frames -> 3 latent frames)."""
    components = dict(tiny_pipeline("ltx").components)
    call: dict[str, Any] = dict(prompt="a red fox", height=256, width=256, num_frames=17, num_inference_steps=2,
                                max_sequence_length=32)
    if class_name == "LTXImageToVideoPipeline":
        call.update(image=_frames(1, 256)[0], guidance_scale=3.0)
    elif class_name == "LTXConditionPipeline":
        from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition as condition

        # An image at frame 0 (blended into the first latent frame) and a 9-frame video at frame 8: its 2 latent
        # frames become extra conditioning tokens prepended to the sequence.
        call.update(guidance_scale=3.0, conditions=[condition(image=_frames(1, 256)[0], frame_index=0),
                                                    condition(video=_frames(9, 256), frame_index=8)])
    else:
        # The long-video pipeline's sampler; tiles of 16 frames overlapping by 8 give two temporal windows.
        components["scheduler"] = _diffusers("LTXEulerAncestralRFScheduler")()
        call.update(num_frames=25, temporal_tile_size=16, temporal_overlap=8, cond_image=_frames(1, 256)[0])
    return _diffusers(class_name)(**components), call


# ----- CogVideoX ------------------------------------------------------------------------------------------------
@_builder("CogVideoXImageToVideoPipeline", "CogVideoXVideoToVideoPipeline", "CogVideoXFunControlPipeline")
def _cogvideox(class_name: str) -> tuple[Any, dict[str, Any]]:
    """CogVideoXPipeline's components; image and control variants concatenate condition latents to the input."""
    base = tiny_pipeline("cogvideox")
    components = dict(base.components)
    # 256 px (grid 3 x 16 x 16): at 128 px the 32 text tokens and the partly filled tiles leave no sparsity.
    call: dict[str, Any] = dict(prompt="a red fox", height=256, width=256, num_inference_steps=2, guidance_scale=3.0,
                                max_sequence_length=32)
    if class_name != "CogVideoXVideoToVideoPipeline":
        config = _config(base.transformer)
        config.update(in_channels=2 * config["in_channels"])
        components["transformer"] = _diffusers("CogVideoXTransformer3DModel")(**config).eval()
    if class_name == "CogVideoXImageToVideoPipeline":
        call.update(image=_frames(1, 256)[0], num_frames=9)
    elif class_name == "CogVideoXVideoToVideoPipeline":
        call.update(video=_frames(9, 256), strength=0.9)
    else:
        call.update(control_video=_frames(9, 256))
    return _diffusers(class_name)(**components), call


@_builder("ConsisIDPipeline")
def _consisid(class_name: str) -> tuple[Any, dict[str, Any]]:
    """CogVideoXPipeline's tokenizer, text encoder and VAE with ConsisID's transformer (CogVideoX 1.0 blocks with 3D
    RoPE; the image latents concatenated to the input channels) and its face path on: the local facial extractor reads
    an identity embedding and two scales of face ViT features (random tensors here), and a perceiver cross-attention
    adds them to the video tokens after every second block."""
    base = tiny_pipeline("cogvideox")
    config = _config(base.transformer)
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    config.update(in_channels=2 * config["in_channels"], use_rotary_positional_embeddings=True, is_train_face=True,
                  LFE_id_dim=8, LFE_vit_dim=16, LFE_depth=2, LFE_dim_head=8, LFE_num_heads=2, LFE_num_id_token=2,
                  LFE_num_querie=4, LFE_num_scale=2, LFE_output_dim=inner * 2 // 3, cross_attn_dim_head=8,
                  cross_attn_num_heads=2)
    for key in ("patch_size_t", "patch_bias", "ofs_embed_dim"):
        config.pop(key)  # CogVideoX-only entries
    transformer = _diffusers("ConsisIDTransformer3DModel")(**config).eval()
    components = {name: base.components[name] for name in ("tokenizer", "text_encoder", "vae", "scheduler")}
    call = dict(prompt="a red fox", image=_frames(1, 256)[0], height=256, width=256, num_frames=9,
                num_inference_steps=2, guidance_scale=3.0, max_sequence_length=32, id_cond=torch.randn(1, 8),
                id_vit_hidden=[torch.randn(1, 5, 16) for _ in range(2)])
    # diffusers exports a dummy ConsisIDPipeline without OpenCV, which only its keypoint drawing (`is_kps`) uses.
    from diffusers.pipelines.consisid.pipeline_consisid import ConsisIDPipeline

    return ConsisIDPipeline(transformer=transformer, **components), call


# ----- HunyuanVideo ---------------------------------------------------------------------------------------------
@_builder("HunyuanSkyreelsImageToVideoPipeline", "HunyuanVideoImageToVideoPipeline")
def _hunyuan_i2v(class_name: str) -> tuple[Any, dict[str, Any]]:
    """HunyuanVideoPipeline's components with the image latents concatenated to the input channels (SkyReels: noise +
    image; HunyuanVideo-I2V "latent_concat": noise + image + a first-frame mask channel)."""
    from .pipelines import TINY_CALL

    base = tiny_pipeline("hunyuan")
    components = dict(base.components)
    config = _config(base.transformer)
    latent = config["in_channels"]
    call: dict[str, Any] = dict(height=256, width=256, num_frames=9, num_inference_steps=2,
                                image=_frames(1, 256)[0], true_cfg_scale=2.0)
    if class_name == "HunyuanSkyreelsImageToVideoPipeline":
        config.update(in_channels=2 * latent)
        call.update(prompt="a red fox", negative_prompt="blurry", prompt_template=TINY_CALL["hunyuan"]["prompt_template"],
                    max_sequence_length=40)
    else:
        # The Llava text encoder reads the image with the prompt; its outputs are given instead (text padded to 24
        # tokens, 11 and 17 of them valid), and the pipeline needs neither the encoder nor its image processor.
        config.update(in_channels=2 * latent + 1, image_condition_type="latent_concat")
        components.update(text_encoder=None, tokenizer=None, image_processor=None)
        for prefix, valid in (("", 11), ("negative_", 17)):
            call[f"{prefix}prompt_embeds"] = torch.randn(1, 24, config["text_embed_dim"])
            call[f"{prefix}pooled_prompt_embeds"] = torch.randn(1, config["pooled_projection_dim"])
            call[f"{prefix}prompt_attention_mask"] = (torch.arange(24) < valid)[None].long()
    components["transformer"] = _diffusers("HunyuanVideoTransformer3DModel")(**config).eval()
    return _diffusers(class_name)(**components), call


@_builder("HunyuanVideoFramepackPipeline")
def _hunyuan_framepack(class_name: str) -> tuple[Any, dict[str, Any]]:
    """HunyuanVideoPipeline's components with Framepack's transformer (history patch embeddings, SigLIP image
    projection) and a tiny SigLIP image encoder (32 px, 16 image tokens). One section of a 2-latent-frame window:
    5 frames at 256 px -> grid 2 x 16 x 16, after 640 history tokens (clean 2 x 16 x 16, 2x 1 x 8 x 8, 4x 4 x 4 x 4)."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    from .pipelines import TINY_CALL

    base = tiny_pipeline("hunyuan")
    components = {name: base.components[name] for name in (
        "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae", "scheduler")}
    config = _config(base.transformer)
    config.update(image_proj_dim=16, has_image_proj=True, has_clean_x_embedder=True)
    components["transformer"] = _diffusers("HunyuanVideoFramepackTransformer3DModel")(**config).eval()
    components["image_encoder"] = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
    )).eval()
    components["feature_extractor"] = SiglipImageProcessor(size={"height": 32, "width": 32})
    call = dict(image=_frames(1, 256)[0], prompt="a red fox", negative_prompt="blurry", true_cfg_scale=2.0,
                height=256, width=256, num_frames=5, latent_window_size=2, num_inference_steps=2,
                prompt_template=TINY_CALL["hunyuan"]["prompt_template"], max_sequence_length=40)
    return _diffusers(class_name)(**components), call


# ----- LTX-2 ----------------------------------------------------------------------------------------------------
_LTX2_CAPTION, _LTX2_TEXT_LAYERS = 32, 2


@_builder("LTX2Pipeline", "LTX2ImageToVideoPipeline", "LTX2ConditionPipeline", "LTX2InContextPipeline",
          "LTX2HDRPipeline", "LTX2DFRPipeline")
def _ltx2(class_name: str) -> tuple[Any, dict[str, Any]]:
    """Video and audio streams with a one-stage VAE (2x in space and time: 9 frames at 32 px -> 5 x 16 x 16 tokens).

    The Gemma text encoder is left out (its tokenizer cannot be built offline): the calls pass its stacked hidden
    states (`prompt_embeds`, left-padded as Gemma's tokenizer pads, with masks), which the text connectors then read.
    """
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    transformer = _diffusers("LTX2VideoTransformer3DModel")(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=16,
        cross_attention_dim=_LTX2_CAPTION, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=8, audio_cross_attention_dim=16, num_layers=2, caption_channels=_LTX2_CAPTION,
        rope_double_precision=False, rope_type="split", vae_scale_factors=(2, 2, 2),  # RoPE coordinates in pixels
        # DFR generates keyframe slots, marked with a learned embedding (LTX-2.5).
        use_keyframes_abs_pos_embedding=class_name == "LTX2DFRPipeline",
    )
    connector = dict(num_attention_heads=4, attention_head_dim=8, num_layers=1, num_learnable_registers=None)
    connectors = LTX2TextConnectors(
        caption_channels=_LTX2_CAPTION, text_proj_in_factor=_LTX2_TEXT_LAYERS + 1, connector_rope_base_seq_len=32,
        rope_theta=10000.0, rope_double_precision=False, causal_temporal_positioning=False, rope_type="split",
        **{f"{stream}_connector_{key}": value for stream in ("video", "audio") for key, value in connector.items()},
    )
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
        layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
        decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatial",),
        upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    )
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8,
    )
    components: dict[str, Any] = dict(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(), audio_vae=audio_vae.eval(), text_encoder=None,
        tokenizer=None, connectors=connectors.eval(), transformer=transformer.eval(), vocoder=None, processor=None,
        prompt_enhancer=None, duration_head=None,
    )
    if class_name in ("LTX2ConditionPipeline", "LTX2InContextPipeline", "LTX2HDRPipeline"):
        components["audio_scheduler"] = FlowMatchEulerDiscreteScheduler()
    if class_name in ("LTX2InContextPipeline", "LTX2HDRPipeline"):
        components.pop("duration_head")
    if class_name == "LTX2HDRPipeline":
        components.pop("processor"), components.pop("prompt_enhancer")
    call: dict[str, Any] = dict(height=32, width=32, num_frames=9, num_inference_steps=2, guidance_scale=3.0)
    for prefix, valid in (("", 8), ("negative_", 5)):
        call[f"{prefix}prompt_embeds"] = torch.randn(1, 12, _LTX2_CAPTION * (_LTX2_TEXT_LAYERS + 1))
        call[f"{prefix}prompt_attention_mask"] = (torch.arange(12) >= 12 - valid)[None].long()
    if class_name == "LTX2DFRPipeline":
        # Distilled: no negative prompt and its own 8-step schedule; one keyframe slot is generated after the video.
        call = {key: value for key, value in call.items() if not key.startswith(("negative_", "guidance_", "num_inf"))}
    # crf 0: no H.264 re-compression of the conditioning image (it needs PyAV, not a dependency).
    if class_name == "LTX2ImageToVideoPipeline":
        call.update(image=_frames(1, 32)[0], image_crf=0)
    elif class_name == "LTX2ConditionPipeline":
        from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

        # An image at frame 0 (blended into the first latent frame) and one at index 3: a keyframe, its latent
        # frame appended to the sequence as extra tokens.
        call["conditions"] = [LTX2VideoCondition(frames=image, index=index, crf=0) for image, index in
                              zip(_frames(2, 32), (0, 3))]
    elif class_name in ("LTX2InContextPipeline", "LTX2HDRPipeline"):
        # IC-LoRA / HDR: a reference video whose tokens are appended after the video's, at the same resolution.
        from diffusers.pipelines.ltx2 import pipeline_ltx2_hdr_lora, pipeline_ltx2_ic_lora

        reference = (pipeline_ltx2_ic_lora.LTX2ReferenceCondition if class_name == "LTX2InContextPipeline"
                     else pipeline_ltx2_hdr_lora.LTX2HDRReferenceCondition)
        call["reference_conditions"] = [reference(frames=_frames(5, 32))]
    return _diffusers(class_name)(**components), call


@_builder("LTX2DFRTemporalRefinePipeline")
def _ltx2_temporal_refine(class_name: str) -> tuple[Any, dict[str, Any]]:
    """LTX2DFRPipeline's components, the ancestral scheduler the round requires and a tiny temporal x2 latent
    upsampler. The round refines a prior DFR pass: its outputs are given as random tensors of the shapes the tiny
    DFR call returns (5 latent frames of 16 x 16, one keyframe at pixel frame 8, 9 audio latent frames)."""
    from diffusers import LTXEulerAncestralRFScheduler
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel

    dfr, dfr_call = _ltx2("LTX2DFRPipeline")
    components = {name: dfr.components[name] for name in (
        "vae", "audio_vae", "text_encoder", "tokenizer", "connectors", "transformer", "vocoder")}
    upsampler = LTX2LatentUpsamplerModel(in_channels=4, mid_channels=32, num_blocks_per_stage=1,
                                         spatial_upsample=False, temporal_upsample=True)
    pipe = _diffusers(class_name)(scheduler=LTXEulerAncestralRFScheduler(eta=0.5),
                                  temporal_latent_upsampler=upsampler.eval(), **components)
    call = {key: dfr_call[key] for key in ("height", "width", "num_frames", "prompt_embeds", "prompt_attention_mask")}
    call.update(latents=torch.randn(1, 4, 5, 16, 16), keyframes_latents=torch.randn(1, 4, 1, 16, 16),
                keyframe_positions=[8], audio_latents=torch.randn(1, 2, 9, 2))
    return pipe, call


from . import modular_pipelines  # noqa: E402,F401  (registers the modular pipeline classes with tiny_pipeline_of)
