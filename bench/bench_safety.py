"""Times the engine's output check: diffusers' StableDiffusionSafetyChecker at SD1.5's size (CLIP ViT-L/14, 304 M
parameters, random weights: the same compute as the real checker) through the engine's own loader and SafetyCheck,
over batches of 512² pictures, and prints a table (JSON too, into $OUT when set).

    python bench/bench_safety.py --work /tmp/safety [--repeats 20] [--device cuda]

The checker is built from tests' copy of SD1.5's safety_checker/config.json (the legacy transformers 4 dump with
*_config_dict keys, so it also shows that transformers 5 reads that file), saved as pytorch_model.bin the way the
`models` command installs it, and loaded with SAFETY_CHECKER=on exactly as the engine loads it.
"""

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor

ENGINE = Path(__file__).resolve().parents[1] / "worker" / "engine"
sys.path.insert(0, str(ENGINE))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from portrait_engine.config import EngineConfig  # noqa: E402
from portrait_engine.safety import load_safety_check  # noqa: E402
from bench_fast import timed  # noqa: E402 (the bench scripts' one timing helper)


def milliseconds(fn, repeats: int) -> float:
    """Median milliseconds of `fn` (synchronized on CUDA), after three warm-up calls."""
    return timed(fn, repeats, warmup=3)["median_s"] * 1000

CONFIG = ENGINE / "tests" / "fixtures" / "sd15-safety-checker-config.json"


def install(folder: Path) -> Path:
    """A safety-checker folder as the models command lays it out, with random weights."""
    if not (folder / "pytorch_model.bin").exists():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        checker = StableDiffusionSafetyChecker(CLIPConfig.from_pretrained(CONFIG))
        torch.save(checker.state_dict(), folder / "pytorch_model.bin")
        (folder / "config.json").write_text(CONFIG.read_text())
        CLIPImageProcessor().save_pretrained(folder)  # CLIP's defaults: SD1.5's feature_extractor settings
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,2,4,8")
    args = parser.parse_args()
    device = torch.device(args.device)
    folder = install(args.work / "safety-checker")
    config = EngineConfig(profile="real", cache_dir=args.work, device=device, safety="on", safety_checker=folder)
    started = time.perf_counter()
    check = load_safety_check(config, device, config.dtype)
    load_s = time.perf_counter() - started
    assert isinstance(check.checker, StableDiffusionSafetyChecker)
    rng = np.random.default_rng(0)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        # Random weights paint noise; the check's cost does not depend on what the pictures show.
        images = [Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(batch)]
        pixels = check.processor(images=images, return_tensors="pt").pixel_values.to(device, check.dtype)
        arrays = [np.asarray(i) for i in images]
        rows.append({
            "batch": batch,
            "check_ms": milliseconds(lambda: check.flags(images), args.repeats),
            "preprocess_ms": milliseconds(lambda: check.processor(images=images, return_tensors="pt"), args.repeats),
            "forward_ms": milliseconds(lambda: check.checker(clip_input=pixels, images=arrays), args.repeats),
        })
    # Its thresholds set past any cosine, the same code flags every picture: the loaded model is the one that decides.
    check.checker.concept_embeds_weights.fill_(-2.0)
    flagged_all = check.flags(images)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    report = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(check.dtype),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__},
        "parameters_m": round(sum(p.numel() for p in check.checker.parameters()) / 1e6, 1),
        "load_s": round(load_s, 2),
        "peak_gib": peak and round(peak, 2),
        "rows": rows,
        "all_flagged_with_thresholds_at_minus_2": all(flagged_all),
    }
    print(f"{report['device']}, {report['dtype']}, {report['parameters_m']} M parameters, loaded in {report['load_s']} s")
    print("| batch of 512² | whole check | CLIPImageProcessor (CPU) | checker forward |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['check_ms']:.1f} ms | {r['preprocess_ms']:.1f} ms | {r['forward_ms']:.1f} ms |")
    print(json.dumps(report))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], f"safety-{report['date']}.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
