"""`vidsparse.support.describe_support` and `vidsparse inspect-model`: supported or not, and which modules become
sparse, checked against what `install` actually patches; model folders are read from configs only (meta device)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from vidsparse.cli import main
from vidsparse.patch import inspect_model, install, uninstall
from vidsparse.support import describe_support, load_for_inspection
from vidsparse.testing import TINY_CALL, tiny_pipeline


def patched_names(pipe) -> set[str]:
    """Names of the modules whose processor `install` really swapped (a processor class named Sparse...)."""
    install(pipe, lambda call: call.dense())
    try:
        return {
            f"{prefix}.{name}" for prefix in ("transformer", "transformer_2") if getattr(pipe, prefix, None) is not None
            for name, module in getattr(pipe, prefix).named_modules()
            if type(getattr(module, "processor", None)).__name__.startswith("Sparse")
        }
    finally:
        uninstall(pipe)


def expand(groups) -> int:
    return sum(group.count for group in groups)


@pytest.mark.parametrize("family", sorted(TINY_CALL))  # no tiny pipeline: MiniMax-H3, JoyImage Edit (test_family_*)
def test_sparse_modules_are_the_ones_install_patches(family):
    pipe = tiny_pipeline(family)
    report = describe_support(pipe)
    assert report.supported and report.info == inspect_model(pipe)
    names = patched_names(pipe)
    assert expand(report.sparse) == len(names) == report.info.num_layers
    patterns = [group.pattern.replace(".", r"\.").replace("*", r"\d+") for group in report.sparse]
    assert all(any(re.fullmatch(pattern, name) for pattern in patterns) for name in names)


def test_kandinsky6_audio_and_cross_attention_reported_dense():
    report = describe_support(tiny_pipeline("kandinsky6"))
    sparse = [g.pattern for g in report.sparse]
    assert sparse == ["transformer.visual_transformer_blocks.*.video_dec_block.self_attention"]
    dense = {g.pattern for g in report.dense}
    assert "transformer.visual_transformer_blocks.*.audio_dec_block.self_attention" in dense
    assert "transformer.visual_transformer_blocks.*.video_dec_block.cross_attention" in dense


def test_linear_attention_model_is_not_supported_with_the_reason():
    from diffusers import SanaVideoTransformer3DModel

    transformer = SanaVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
    )
    report = describe_support(transformer)
    assert not report.supported and "linear attention" in report.reason
    assert report.sparse == () and expand(report.dense) == 2
    assert "not supported" in str(report)


def test_describe_support_rejects_what_is_not_a_model():
    with pytest.raises(ValueError, match="pipeline"):
        describe_support(object())


def test_full_size_model_folder_is_inspected_from_its_config_without_weights(tmp_path):
    """Wan 2.1 14B's geometry (40 layers, 40 heads of 128): built on the meta device, nothing allocated."""
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    (tmp_path / "model_index.json").write_text(json.dumps(
        {"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
         "vae": ["diffusers", "AutoencoderKLWan"]}))
    model = load_for_inspection(str(tmp_path))
    assert next(model.transformer.parameters()).device == torch.device("meta")
    info = describe_support(model).info
    assert (info.family, info.num_layers, info.num_heads, info.head_dim) == ("wan", 40, 40, 128)


def test_cli_inspect_model(tmp_path, capsys):
    assert main(["inspect-model", "tiny-kandinsky5", "--variant", "i2v"]) == 0
    out = capsys.readouterr().out
    assert "supported (family kandinsky5): 2 self-attention layers" in out
    assert "sparse: transformer.visual_transformer_blocks.*.self_attention" in out
    # A transformer folder of a model vidsparse leaves alone: exit status 1 and the reason.
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "SanaVideoTransformer3DModel", "num_layers": 1}))
    assert main(["inspect-model", str(tmp_path)]) == 1
    assert "linear attention" in capsys.readouterr().out
    assert main(["inspect-model", str(tmp_path), "--variant", "i2v"]) == 2  # --variant is for tiny models only


def test_framepack_is_supported_and_reports_its_sparse_modules(tmp_path, capsys):
    from vidsparse.testing.pipeline_classes import tiny_pipeline_of

    pipe, _ = tiny_pipeline_of("HunyuanVideoFramepackPipeline")
    report = describe_support(pipe)
    assert report.supported and report.info.family == "hunyuan"
    assert expand(report.sparse) == len(patched_names(pipe)) == report.info.num_layers == 3
    # FramePackI2V_HY's transformer config (20 dual- and 40 single-stream blocks, 24 heads of 128), weights not read.
    (tmp_path / "config.json").write_text(json.dumps({
        "_class_name": "HunyuanVideoFramepackTransformer3DModel", "has_clean_x_embedder": True,
        "has_image_proj": True, "image_proj_dim": 1152}))
    assert main(["inspect-model", str(tmp_path)]) == 0
    assert "supported (family hunyuan): 60 self-attention layers" in capsys.readouterr().out


@pytest.mark.parametrize("class_name, expected", [
    # Default configs of the released checkpoints' geometry: (family, layers, heads, head_dim).
    ("ChronoEditTransformer3DModel", ("wan", 40, 40, 128)),
    ("ConsisIDTransformer3DModel", ("cogvideox", 30, 30, 64)),
    ("HeliosTransformer3DModel", ("helios", 40, 40, 128)),
    ("AnyFlowTransformer3DModel", ("anyflow", 40, 40, 128)),
    ("MiniMaxH3Transformer3DModel", ("minimax_h3", 50, 56, 128)),
    ("JoyImageEditTransformer3DModel", ("joyimage", 20, 24, 128)),
])
def test_transformer_folder_of_a_newly_examined_class_is_supported(tmp_path, capsys, class_name, expected):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": class_name}))
    info = describe_support(load_for_inspection(str(tmp_path))).info
    assert (info.family, info.num_layers, info.num_heads, info.head_dim) == expected
    assert main(["inspect-model", str(tmp_path)]) == 0
    assert f"supported (family {expected[0]}): {expected[1]} self-attention layers" in capsys.readouterr().out


@pytest.mark.parametrize("class_name, config, reason", [
    # Latte-1's geometry (its constructor defaults leave the sample size unset).
    ("LatteTransformer3DModel", dict(sample_size=64, patch_size=2, in_channels=4, out_channels=8,
                                     num_attention_heads=16, attention_head_dim=72, num_layers=28,
                                     cross_attention_dim=1152, caption_channels=4096, norm_type="ada_norm_single",
                                     video_length=16), "factorized"),
    ("AnyFlowFARTransformer3DModel", {}, "block-causal"),
    ("JoyImageEditPlusTransformer3DModel", {}, "different sizes"),
])
def test_models_left_alone_are_refused_with_the_reason(tmp_path, capsys, class_name, config, reason):
    import vidsparse
    from vidsparse.runtime import PatchError

    (tmp_path / "config.json").write_text(json.dumps({"_class_name": class_name, **config}))
    assert main(["inspect-model", str(tmp_path)]) == 1
    assert reason in capsys.readouterr().out
    with pytest.raises(PatchError, match=f"{class_name} is not supported by vidsparse: .*{reason}"):
        vidsparse.patch(load_for_inspection(str(tmp_path)))

