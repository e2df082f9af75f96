"""Our DreamBooth training against diffusers' reference scripts, on identical weights, photos, seed and settings.

    python bench/compare_training.py --diffusers-src /path/to/diffusers [--mode lora|full] [--device cpu|cuda]
        [--base-model SD15_FOLDER] [--steps 20] [--resolution 64] ...

The reference (examples/dreambooth/train_dreambooth_lora.py, or train_dreambooth.py for --mode full) is run from a
diffusers source checkout kept outside this repository (its code is never copied here), in a subprocess with
accelerate, logging every micro-batch loss. Our engine trains in-process on the same base folder (the tiny
profile's saved weights unless --base-model is given) and the same photo folder, listed in the order the reference
lists it. Printed and written to <out>/summary.json: per-step loss differences and the trained weights' differences,
next to the same figures for our run with another seed (what unaligned randomness would look like).

Needs torchvision (the reference's image transforms) and accelerate in the interpreter that runs the reference
(--python, default this one). Randomness is aligned by design: the engine draws its random numbers in the scripts'
order (portrait_engine.train.ReferenceRandom), so the remaining differences are float rounding.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ENGINE = Path(__file__).resolve().parents[1] / "worker" / "engine"
sys.path.insert(0, str(ENGINE))

from portrait_engine.config import EngineConfig  # noqa: E402
from portrait_engine.engine import Engine  # noqa: E402
from portrait_engine.protocol import TrainParams, TrainRequest  # noqa: E402
from portrait_engine.tiny import ensure_tiny_models  # noqa: E402

# Runs the reference script as __main__, recording what it logs per micro-batch and whether that micro-batch
# ended an optimizer step (accelerate's sync_gradients), instead of sending it to a tracker.
REFERENCE_RUNNER = r"""
import json, runpy, sys
import accelerate
log_path, script, *args = sys.argv[1:]
records = open(log_path, "w")
def log(self, values, step=None, log_kwargs=None):
    records.write(json.dumps({"loss": values["loss"], "sync": self.sync_gradients, "step": step}) + "\n")
    records.flush()
accelerate.Accelerator.log = log
accelerate.Accelerator.init_trackers = lambda self, *a, **k: None
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
"""


class Quiet:
    def check_cancel(self) -> None:
        pass

    def progress(self, step: int, total: int, loss: float | None = None) -> None:
        pass


def make_photos(folder: Path, count: int, size: int) -> None:
    """Synthetic 'portraits' (the tiny model cannot tell them from real ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    colours = [("navy", "peachpuff"), ("darkgreen", "tan"), ("maroon", "wheat"), ("black", "bisque"), ("teal", "linen")]
    for i in range(count):
        background, face = colours[i % len(colours)]
        image = Image.new("RGB", (size, size), background)
        draw = ImageDraw.Draw(image)
        draw.ellipse((size * (0.3 + 0.02 * i), size * 0.18, size * (0.7 - 0.02 * i), size * 0.65), fill=face)
        image.save(folder / f"{i}.png")


def run_reference(args, base: Path, photos: Path, out: Path) -> tuple[list[float], dict[str, torch.Tensor], float]:
    name = "train_dreambooth_lora.py" if args.mode == "lora" else "train_dreambooth.py"
    script = Path(args.diffusers_src) / "examples" / "dreambooth" / name
    log_path = out / "reference-losses.jsonl"
    flags = [
        f"--pretrained_model_name_or_path={base}",
        f"--instance_data_dir={photos}",
        f"--instance_prompt={args.prompt}",
        f"--output_dir={out / 'reference'}",
        f"--resolution={args.resolution}",
        "--center_crop",
        f"--train_batch_size={args.batch_size}",
        f"--gradient_accumulation_steps={args.grad_accum}",
        f"--learning_rate={args.learning_rate}",
        "--lr_scheduler=constant",
        "--lr_warmup_steps=0",
        f"--max_train_steps={args.steps}",
        f"--seed={args.seed}",
        f"--mixed_precision={args.mixed_precision}",
        f"--checkpointing_steps={10**9}",
        "--pre_compute_text_embeddings",
    ]
    if args.mode == "lora":
        flags.append(f"--rank={args.rank}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    started = time.monotonic()
    subprocess.run([args.python, "-c", REFERENCE_RUNNER, str(log_path), str(script), *flags], env=env, check=True)
    seconds = time.monotonic() - started
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    losses, window = [], []
    for record in records:  # an optimizer step's loss is the mean over its micro-batches, as the engine reports it
        window.append(record["loss"])
        if record["sync"]:
            losses.append(sum(window) / len(window))
            window = []
    if args.mode == "lora":
        weights = load(out / "reference" / "pytorch_lora_weights.safetensors")
    else:
        weights = {f"unet.{k}": v for k, v in load(out / "reference" / "unet" / "diffusion_pytorch_model.safetensors").items()}
    return losses, weights, seconds


def run_ours(args, engine: Engine, photos: Path, out: Path, seed: int) -> tuple[list[float], dict[str, torch.Tensor], float]:
    output = out / f"ours-seed{seed}.safetensors"
    params = TrainParams(
        mode=args.mode,
        rank=args.rank,
        alpha=float(args.rank),  # the LoRA script's lora_alpha is its rank
        learning_rate=args.learning_rate,
        max_steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        resolution=args.resolution,
        mixed_precision=args.mixed_precision,
        seed=seed,
        instance_prompt=args.prompt,
    )
    # The reference reads the folder in os.listdir order; so do we.
    request = TrainRequest(
        id="compare", op="train", photos=[str(p) for p in photos.iterdir()], output=str(output), params=params
    )
    started = time.monotonic()
    result = engine.train(request, Quiet())
    seconds = time.monotonic() - started
    weights = load(output)
    if args.mode == "full":
        weights = {f"unet.{k}": v for k, v in weights.items()}
    return result.losses, weights, seconds


def load(path: Path) -> dict[str, torch.Tensor]:
    import safetensors.torch
    from diffusers.utils import convert_unet_state_dict_to_peft

    # The reference saves attention LoRA layers as `.lora.down`/`.lora.up`, the engine in peft's `.lora_A`/`.lora_B`.
    return convert_unet_state_dict_to_peft({k: v.float() for k, v in safetensors.torch.load_file(path).items()})


def differences(losses: list[float], reference_losses: list[float], weights: dict, reference_weights: dict) -> dict:
    if weights.keys() != reference_weights.keys():
        missing = sorted(set(reference_weights) ^ set(weights))[:5]
        raise SystemExit(f"the two runs trained different tensors, e.g. {missing}")
    loss_abs = [abs(a - b) for a, b in zip(losses, reference_losses)]
    loss_rel = [d / abs(b) for d, b in zip(loss_abs, reference_losses)]
    max_abs = max((weights[k] - reference_weights[k]).abs().max().item() for k in weights)
    difference = torch.sqrt(sum(((weights[k] - reference_weights[k]) ** 2).sum() for k in weights))
    norm = torch.sqrt(sum((reference_weights[k] ** 2).sum() for k in weights))
    # LoRA up-projections start at zero, so their difference is measured against what training put there.
    ups = [k for k in weights if ".up." in k or "lora_B" in k]
    up_rel = None
    if ups:
        up_diff = torch.sqrt(sum(((weights[k] - reference_weights[k]) ** 2).sum() for k in ups))
        up_rel = (up_diff / torch.sqrt(sum((reference_weights[k] ** 2).sum() for k in ups))).item()
    return {
        "steps_compared": len(loss_abs),
        "loss_max_abs_diff": max(loss_abs),
        "loss_max_rel_diff": max(loss_rel),
        "weights_max_abs_diff": max_abs,
        "weights_rel_l2_diff": (difference / norm).item(),
        "lora_up_rel_l2_diff": up_rel,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusers-src", required=True, help="diffusers source checkout (outside this repo)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the reference script")
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--base-model", type=Path, help="SD1.5 folder (diffusers layout); default: the tiny profile")
    parser.add_argument("--photos", type=Path, help="photo folder; default: synthetic photos")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed-precision", default=None, help="default: no on CPU, fp16 on CUDA")
    parser.add_argument("--prompt", default="a photo of sks person")
    args = parser.parse_args()
    args.learning_rate = args.learning_rate or (1e-4 if args.mode == "lora" else 5e-6)
    args.mixed_precision = args.mixed_precision or ("no" if args.device == "cpu" else "fp16")
    out = args.out or Path(tempfile.mkdtemp(prefix="compare-training-"))
    out.mkdir(parents=True, exist_ok=True)

    cache = out / "engine-cache"
    if args.base_model is None:
        base, _ = ensure_tiny_models(cache)
        config = EngineConfig(profile="tiny", cache_dir=cache, device=torch.device(args.device))
    else:
        base = args.base_model
        config = EngineConfig(profile="real", cache_dir=cache, device=torch.device(args.device), base_model=base)
    photos = args.photos
    if photos is None:
        photos = out / "photos"
        # At the resolution, as the bot sends them: the scripts resize differently (LoRA: Lanczos, full: bilinear).
        make_photos(photos, 5, args.resolution)

    reference_losses, reference_weights, reference_seconds = run_reference(args, base, photos, out)
    engine = Engine(config)
    losses, weights, seconds = run_ours(args, engine, photos, out, args.seed)
    other_losses, other_weights, _ = run_ours(args, engine, photos, out, args.seed + 1)
    summary = {
        "mode": args.mode,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "mixed_precision": args.mixed_precision,
        "base": str(base),
        "steps": args.steps,
        "versions": {"torch": torch.__version__, **_versions()},
        "reference_seconds": reference_seconds,
        "ours_seconds": seconds,
        "aligned": differences(losses, reference_losses, weights, reference_weights),
        "other_seed": differences(other_losses, reference_losses, other_weights, reference_weights),
        "reference_losses": reference_losses,
        "our_losses": losses,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if not k.endswith("_losses")}, indent=2))
    print(f"summary: {out / 'summary.json'}")


def _versions() -> dict[str, str]:
    import accelerate
    import diffusers
    import peft
    import transformers

    return {m.__name__: m.__version__ for m in (diffusers, transformers, peft, accelerate)}


if __name__ == "__main__":
    main()
