"""Wrong types at the public API give a ValueError naming the argument, never a TypeError from deep inside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import vidsparse
from vidsparse import BlockPlan, block_sparse_attention
from vidsparse.attention import reference_attention
from vidsparse.cli import main
from vidsparse.profile import Profile, ProfileError

SHIPPED_PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "tiny-wan.json"


# ----- Profile.load / save --------------------------------------------------------------------------------------
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


# ----- vidsparse.patch ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    from vidsparse.testing import tiny_pipeline

    return tiny_pipeline("wan")


@pytest.mark.parametrize("layers", [1, [1], (1,), range(1, 2), np.int64(1)], ids=repr)
def test_patch_takes_one_dense_layer_index_or_several(pipe, layers):
    controller = vidsparse.patch(pipe, strategy="neighborhood", dense_layers=layers)
    try:
        assert controller.policy.schedule.dense_layers == frozenset({1})
    finally:
        vidsparse.unpatch(pipe)


@pytest.mark.parametrize("arguments,message", [
    (dict(dense_layers="0,1"), "dense_layers must be a layer index or an iterable of layer indices, got '0,1'"),
    (dict(dense_layers=1.0), "dense_layers must be a layer index or an iterable"),
    (dict(dense_layers=[0.0]), "dense_layers must be integer layer indices, got \\[0.0\\]"),
    (dict(dense_layers=[True]), "dense_layers must be integer layer indices"),
    (dict(dense_layers=7), "dense_layers \\[7\\] are outside the model's layers 0..1"),
    (dict(dense_warmup_steps="3"), "dense_warmup_steps must be an int >= 0 or a float in \\[0, 1\\)"),
    (dict(strategy=123), "strategy must be a name, a \\(name, params\\) pair or a Strategy"),
    (dict(strategy=("neighborhood", 3)), "strategy must be a name, a \\(name, params\\) pair"),
    (dict(backend=1), "backend must be one of .*'auto'\\], got 1"),
    (dict(backend="cuda"), "backend must be one of .*, got 'cuda'"),
    (dict(profile=123, strategy=None), "profile must be a path or a loaded vidsparse Profile, got int"),
], ids=lambda a: repr(a) if isinstance(a, dict) else "")
def test_patch_names_a_bad_argument(pipe, arguments, message):
    arguments = {"strategy": "neighborhood", **arguments}
    with pytest.raises(ValueError, match=message):
        vidsparse.patch(pipe, **arguments)
    assert vidsparse.patch(pipe, strategy="dense") is not None  # the failed call left the pipeline unpatched
    vidsparse.unpatch(pipe)


# ----- block_sparse_attention -----------------------------------------------------------------------------------
def _inputs():
    q, k, v = torch.randn(3, 1, 2, 32, 16, dtype=torch.float64)
    mask = (torch.rand(1, 2, 2, 2) < 0.5) | torch.eye(2, dtype=torch.bool)  # every query block keeps a key block
    plan = BlockPlan.from_mask(mask, block_q=16, block_k=16, q_len=32, kv_len=32)
    return q, k, v, plan


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_attention_names_an_argument_that_is_not_a_tensor(name):
    q, k, v, plan = _inputs()
    arguments = dict(q=q, k=k, v=v, plan=plan)
    arguments[name] = arguments[name].numpy()
    with pytest.raises(ValueError, match=f"^{name} must be a torch.Tensor \\[B, H, S, D\\], got ndarray"):
        block_sparse_attention(**arguments)


def test_attention_names_a_plan_that_is_not_a_block_plan():
    q, k, v, plan = _inputs()
    with pytest.raises(ValueError, match="^plan must be a vidsparse BlockPlan, got Tensor"):
        block_sparse_attention(q, k, v, plan.kv_counts)


@pytest.mark.parametrize("scale", ["0.25", torch.tensor(0.25), float("nan"), True])
def test_attention_names_a_bad_scale(scale):
    q, k, v, plan = _inputs()
    with pytest.raises(ValueError, match="^scale must be a finite number"):
        block_sparse_attention(q, k, v, plan, scale=scale)


@pytest.mark.parametrize("backend", [None, 1, ["gather"]])
def test_attention_names_a_backend_that_is_not_a_name(backend):
    q, k, v, plan = _inputs()
    with pytest.raises(ValueError, match="^backend must be a str"):
        block_sparse_attention(q, k, v, plan, backend=backend)


def test_attention_accepts_an_int_scale():
    q, k, v, plan = _inputs()
    got = block_sparse_attention(q, k, v, plan, scale=1, backend="gather")
    torch.testing.assert_close(got, reference_attention(q, k, v, plan, 1.0))


# ----- the CLIs: a bad flag is one line naming it, before any model is loaded ------------------------------------
NO_MODEL = "/nonexistent/pipeline"  # loading it would fail: an error about a flag shows the flag was checked first


@pytest.mark.parametrize("argv,message", [
    (["eval", "--height", "0"], "argument --height: expected an integer >= 1, got '0'"),
    (["eval", "--steps", "two"], "argument --steps: expected an integer >= 1, got 'two'"),
    (["eval", "--backend", "cuda"], "argument --backend: expected one of flex, gather, reference, triton, auto, "
                                    "got 'cuda'"),
    (["eval", "--dtype", "half"], "argument --dtype: invalid choice: 'half'"),
    (["eval", "--fps", "-1"], "argument --fps: expected an integer >= 1"),
    (["profile", "--prompts", "p.txt", "--out", "p.json", "--frames", "-9"], "argument --frames: expected an integer"),
    (["profile", "--prompts", "p.txt", "--out", "p.json", "--backend", "1"], "argument --backend: expected one of"),
])
def test_cli_rejects_a_bad_flag_when_parsing(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([argv[0], "--model", NO_MODEL, *argv[1:]])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--strategy", "nope"], "unknown strategy 'nope'"),
    (["--strategy", 'neighborhood:{"window": 0}'], "neighborhood: window must be an integer >= 1"),
    (["--strategy", "neighborhood:[1]"], "--strategy 'neighborhood:[1]': parameters must be a JSON object"),
    (["--profile", "missing.json"], "--profile missing.json: no such file"),
    ([], "give at least one of --profile, --strategy, --budgets"),
])
def test_eval_rejects_a_bad_sparse_configuration_before_loading_the_model(extra, message, capsys):
    assert main(["eval", "--model", NO_MODEL, "--prompt", "a cat", *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith("vidsparse eval: error: ") and message in error
