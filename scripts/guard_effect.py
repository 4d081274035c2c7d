"""What the quality guard changes on tiny-wan: the demo's profile on prompts it was not calibrated on, guard on vs off.

The profile is made the way `vidsparse demo` makes it (one calibration prompt, the demo's speed target, cost model
and dense layers); both variants then run with the same prompts and seeds through `vidsparse eval`'s runner, and
quality is against the dense video (PSNR, SSIM). The guard runs at its default config (budgets: the profile's
per-head errors).

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python scripts/guard_effect.py     # -> scripts/results/guard_effect.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path

import vidsparse
from vidsparse.evaluate.demo import COST_MODEL, DEMO_STEPS, DENSE_LAYERS, TARGET_SPEEDUP
from vidsparse.evaluate.runner import EvalSettings, Variant, run_evaluation
from vidsparse.profiler import profile_pipeline
from vidsparse.tiny_model import TINY_WAN_CALL, TINY_WAN_PROMPTS, load_tiny_wan

RESULTS = Path(__file__).resolve().parent / "results"
CALIBRATION_PROMPT = TINY_WAN_PROMPTS[2]
EVAL_PROMPTS = (TINY_WAN_PROMPTS[0], TINY_WAN_PROMPTS[5], TINY_WAN_PROMPTS[9], TINY_WAN_PROMPTS[12])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=RESULTS / "guard_effect.json")
    args = parser.parse_args()
    pipe = load_tiny_wan()
    pipe.set_progress_bar_config(disable=True)
    call = {**TINY_WAN_CALL, "num_inference_steps": DEMO_STEPS}
    extra = {k: v for k, v in call.items() if k not in ("num_frames", "height", "width", "num_inference_steps")}
    profile = profile_pipeline(
        pipe, [CALIBRATION_PROMPT], height=call["height"], width=call["width"], frames=call["num_frames"],
        steps=DEMO_STEPS, target_speedup=TARGET_SPEEDUP, dense_layers=DENSE_LAYERS, cost_model=COST_MODEL,
        call_kwargs=extra,
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "profile.json"
        profile.save(path)
        variants = [Variant(f"guard {'on' if on else 'off'}", lambda p, on=on: vidsparse.patch(p, path, guard=on))
                    for on in (True, False)]
        settings = EvalSettings(prompts=list(EVAL_PROMPTS), seeds=args.seeds, height=call["height"],
                                width=call["width"], num_frames=call["num_frames"], num_inference_steps=DEMO_STEPS,
                                call_kwargs=extra, warmup=0, save_videos=False)
        report = run_evaluation(pipe, variants, settings, progress=False).to_json()
    rows = []
    for v in report["variants"]:
        guard = v.get("guard") or {}
        rows.append({
            "variant": v["label"], "psnr_mean": v["quality"]["mean"]["psnr"], "ssim_mean": v["quality"]["mean"]["ssim"],
            "psnr_per_video": [video["psnr"] for video in v["quality"]["videos"]],
            "density": v["density"]["mean_density"], "checked_heads": guard.get("checked_heads"),
            "switched_heads": guard.get("switched_heads"), "switches": guard.get("switches"),
        })
        print(f"{v['label']:10} PSNR {rows[-1]['psnr_mean']:.2f} dB  SSIM {rows[-1]['ssim_mean']:.4f}  density "
              f"{rows[-1]['density']:.3f}  guard: {guard.get('checked_heads', '-')} heads checked, "
              f"{guard.get('switched_heads', '-')} switched ({len(guard.get('switches', []))} switches)")
    result = {
        "command": "scripts/guard_effect.py --seeds " + " ".join(map(str, args.seeds)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": "tiny-wan", "calibration_prompt": CALIBRATION_PROMPT, "eval_prompts": list(EVAL_PROMPTS),
        "steps": DEMO_STEPS, "target_speedup": TARGET_SPEEDUP, "profile_mean_density": profile.summary.mean_density,
        "variants": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
