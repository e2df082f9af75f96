"""Times the engine beside diffusers' own pipelines on full-size SD1.5 with random weights (same compute as the real
model), in one process on one card, and prints a table (JSON too, into $OUT when set).

    python bench/bench_engine.py --work /tmp/bench [--train-steps 40] [--repeats 5]

Workloads (DESIGN.md's performance anchors): a LoRA training step at 512² batch 1 rank 4; a whole LoRA job;
`/imagine` (20 UniPC steps, LoRA, 512², batch 1) and `/pose` (the same plus ControlNet openpose), the engine's times
including the PNG it writes; switching the active LoRA between two users. The reference for
generation is StableDiffusionPipeline / StableDiffusionControlNetPipeline with `load_lora_weights`, as a diffusers user
would write it. The training reference is examples/dreambooth/train_dreambooth_lora.py (not in the pip package):
`bench/compare_training.py` runs it; its timings include process start-up, so this file reports the engine only and
quotes the reference's step time from DESIGN.md.
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import diffusers
import numpy as np
import peft
import torch
import transformers
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers import UniPCMultistepScheduler
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker" / "engine"))
import make_random_sd15  # noqa: E402
from portrait_engine.config import parse_config  # noqa: E402
from portrait_engine.engine import Engine  # noqa: E402
from portrait_engine.protocol import GenerateRequest, TrainParams, TrainRequest  # noqa: E402

PROMPT = "a portrait photo of sks person as an astronaut"


class Quiet:
    """A job context that never cancels and ignores progress."""

    def check_cancel(self) -> None:
        pass

    def progress(self, step: int, total: int, loss: float | None = None) -> None:
        pass


def synchronized_seconds(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def timed(fn, repeats: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        fn()
    runs = [synchronized_seconds(fn) for _ in range(repeats)]
    return {"median_s": statistics.median(runs), "min_s": min(runs), "runs": runs}


def build_models(work: Path) -> tuple[Path, Path]:
    base, controlnet = work / "sd15", work / "controlnet"
    if not (base / "model_index.json").exists():
        make_random_sd15.main(str(base))
    if not (controlnet / "config.json").exists():
        torch.manual_seed(1)
        ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(base / "unet")).save_pretrained(controlnet)
    return base, controlnet


def write_inputs(work: Path) -> tuple[list[str], str]:
    rng = np.random.default_rng(0)
    photos = []
    for i in range(10):
        path = work / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(path)
        photos.append(str(path))
    skeleton = np.zeros((512, 512, 3), dtype=np.uint8)
    skeleton[100:420, 250:262] = (255, 0, 0)
    skeleton[180:192, 150:362] = (0, 255, 0)
    Image.fromarray(skeleton).save(work / "pose.png")
    return photos, str(work / "pose.png")


def train_lora(engine: Engine, photos: list[str], output: Path, steps: int, observer=None):
    request = TrainRequest(id=output.stem, op="train", photos=photos, output=str(output),
                           params=TrainParams(max_steps=steps, rank=4, alpha=4, grad_accum=1, batch_size=1))
    return engine.train(request, Quiet(), observer=observer)


def bench_training(engine: Engine, photos: list[str], work: Path, steps: int) -> tuple[dict, str]:
    stamps: list[float] = []

    def observe(_training) -> None:
        torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    output = work / "lora.safetensors"
    torch.cuda.reset_peak_memory_stats()
    result = train_lora(engine, photos, output, steps, observe)
    steady = np.diff(stamps)[5:]  # the first steps pay for allocator warm-up and cuDNN autotuning
    return {
        "step_median_ms": float(np.median(steady) * 1000),
        "samples_per_s": float(1 / np.median(steady)),
        "job_seconds": result.seconds,
        "job_steps": steps,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }, str(output)


def bench_switch(engine: Engine, reference: StableDiffusionPipeline, lora: str, other: str, repeats: int) -> dict:
    """Switching the active user's LoRA: the engine's cached adapters vs unload + load_lora_weights."""

    def engine_switch():
        engine.loras.activate(other, 1.0)
        engine.loras.activate(lora, 1.0)

    def reference_switch():
        for path in (other, lora):
            reference.unload_lora_weights()
            reference.load_lora_weights(path)

    ours = timed(engine_switch, repeats)
    engine.loras.deactivate()
    theirs = timed(reference_switch, repeats)
    # Each call switched twice.
    return {"engine_ms": ours["median_s"] * 500, "diffusers_ms": theirs["median_s"] * 500}


def bench_generation(engine: Engine, base: Path, controlnet_path: Path, lora: str, pose: str, work: Path, repeats: int) -> dict:
    def ours(control: str | None):
        request = GenerateRequest(id="g", op="generate", prompt=PROMPT, lora=lora, control_image=control, steps=20,
                                  seed=7, width=512, height=512, scheduler="unipc", output_dir=str(work / "out"))
        return lambda: engine.generate(request, Quiet())

    results = {"imagine_engine": timed(ours(None), repeats), "pose_engine": timed(ours(pose), repeats)}

    reference = StableDiffusionPipeline.from_pretrained(base, torch_dtype=torch.float16, safety_checker=None).to("cuda")
    reference.scheduler = UniPCMultistepScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(lora)
    control_reference = StableDiffusionControlNetPipeline(
        **reference.components, controlnet=ControlNetModel.from_pretrained(controlnet_path, torch_dtype=torch.float16).to("cuda")
    )
    control_reference.set_progress_bar_config(disable=True)
    pose_image = Image.open(pose)

    def generator():
        return torch.Generator("cuda").manual_seed(7)

    results["imagine_diffusers"] = timed(lambda: reference(PROMPT, num_inference_steps=20, generator=generator()), repeats)
    results["pose_diffusers"] = timed(
        lambda: control_reference(PROMPT, image=pose_image, num_inference_steps=20, generator=generator()), repeats
    )
    other = work / "other.safetensors"
    train_lora(engine, [str(p) for p in sorted(work.glob("photo*.png"))[:3]], other, 5)
    results["lora_switch"] = bench_switch(engine, reference, lora, str(other), repeats)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base, controlnet = build_models(args.work)
    photos, pose = write_inputs(args.work)
    engine = Engine(parse_config(["--profile", "real", "--base-model", str(base), "--controlnet", str(controlnet),
                                  "--device", "cuda", "--cache-dir", str(args.work / "cache")], env={}))
    training, lora = bench_training(engine, photos, args.work, args.train_steps)
    generation = bench_generation(engine, base, controlnet, lora, pose, args.work, args.repeats)
    report = {
        "date": datetime.date.today().isoformat(),
        "card": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
        "training": training,
        "generation": generation,
    }
    print(json.dumps(report, indent=2))
    rows = [
        ("LoRA train step 512² b1 r4 (engine)", f"{training['step_median_ms']:.1f} ms", "226 ms (DESIGN.md, train_dreambooth_lora.py)"),
        (f"LoRA job, {args.train_steps} steps (engine, incl. caching)", f"{training['job_seconds']:.1f} s", ""),
        ("/imagine 20 steps + LoRA b1", f"{generation['imagine_engine']['median_s']:.3f} s", f"{generation['imagine_diffusers']['median_s']:.3f} s"),
        ("/pose ControlNet + LoRA 20 steps b1", f"{generation['pose_engine']['median_s']:.3f} s", f"{generation['pose_diffusers']['median_s']:.3f} s"),
        ("LoRA switch", f"{generation['lora_switch']['engine_ms']:.1f} ms", f"{generation['lora_switch']['diffusers_ms']:.1f} ms (unload + load_lora_weights)"),
    ]
    print(f"\n{report['card']}, {report['date']}, torch {torch.__version__}, diffusers {diffusers.__version__}")
    print(f"{'workload':<48} {'engine':>12}   diffusers reference")
    for name, ours, theirs in rows:
        print(f"{name:<48} {ours:>12}   {theirs}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_engine.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
