"""What an intermediate preview costs on the scheduler path: one LoRA training in a slot, its optimizer step timed,
then previews painted in its slot (portrait_engine/previews.py, PNG written) at a few denoising-step counts, eagerly
and through the fast path's graphs.

    python3 bench/bench_previews.py --work /tmp/work            # on the device machine (SD1.5-size random weights)
    python bench/bench_previews.py --work /tmp/bench --tiny     # CPU, tiny profile: checks the script's logic only
"""

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "worker" / "engine"))

from bench_fast import inputs, timed, train_request  # noqa: E402
from portrait_engine.config import EngineConfig  # noqa: E402
from portrait_engine.engine import Engine  # noqa: E402
from portrait_engine.multitrain import SlotTraining  # noqa: E402
from portrait_engine.previews import paint_in_slot  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preview-steps", default="2,4,8")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from portrait_engine.tiny import ensure_tiny_models

        side = 64
        ensure_tiny_models(args.work / "cache")
        config = EngineConfig(profile="tiny", cache_dir=args.work / "cache", device=torch.device("cpu"), fast="off")
    else:
        import bench_engine

        side = 512
        base, controlnet = bench_engine.build_models(args.work)
        config = EngineConfig(profile="real", cache_dir=args.work / "cache", device=torch.device("cuda"),
                              base_model=base, controlnet=controlnet, fast="on")
    engine = Engine(config)
    photos, _ = inputs(args.work, side)
    request = train_request(photos[:4], args.work / "preview-job.safetensors", steps=1000, side=side)
    params, pixels, class_pixels, _ = engine.prepare_training(request)
    training = SlotTraining(engine.models, params, 0, pixels, class_pixels)
    report: dict = {
        "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "side": side,
        "warmup": engine.warmup,
        "train_step_ms": round(1000 * timed(training.step, args.repeats * 2, warmup=1)["median_s"], 1),
        "preview_s": {},
    }
    for steps in (int(s) for s in args.preview_steps.split(",")):
        job = request.model_copy(update={"preview_steps": steps, "preview_dir": str(args.work / "previews")})
        for path, fast in (("eager", None), ("graphs", engine.fast)):
            if path == "graphs" and fast is None:
                continue
            def paint() -> None:
                if paint_in_slot(engine.models, fast, job, params, 0, training.step_count) is None:
                    raise RuntimeError("the preview failed (see the log)")

            seconds = timed(paint, args.repeats, warmup=1)["median_s"]
            report["preview_s"][f"{steps} steps, {path}"] = round(seconds, 3)
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
