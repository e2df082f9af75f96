"""Where the slot path's figures come from (issue 8 follow-up), on a CUDA card, beside the reference in one process:

- 8 users' /imagine in one batch against 8 reference calls, with the slot layers' update in the model's dtype
  (the default) and in float32, through the graphs and eagerly: which part moves the pictures;
- a profile of the scheduler's training step (one job, shared_step): the top CUDA kernels and the host time;
- the restart warm-up on the inductor cache this run filled.

    python bench/probe_slots.py --work /tmp/work      # writes $OUT/probe_slots.json when OUT is set
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "worker" / "engine"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import bench_engine  # noqa: E402
import bench_fast  # noqa: E402
from bench_fast import PROMPT, Quiet, image_diff, inputs, log, sync, train_request  # noqa: E402
from diffusers import StableDiffusionPipeline, UniPCMultistepScheduler  # noqa: E402

import portrait_engine.multilora as multilora  # noqa: E402
from portrait_engine.config import EngineConfig  # noqa: E402
from portrait_engine.engine import Engine  # noqa: E402
from portrait_engine.multigen import Generation, denoise_step  # noqa: E402
from portrait_engine.multitrain import SlotTraining, shared_step  # noqa: E402
from portrait_engine.protocol import GenerateRequest  # noqa: E402
from portrait_engine.scheduler import SlotTable  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--restart-timeout", type=int, default=150)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {"date": time.strftime("%Y-%m-%d"), "card": torch.cuda.get_device_name()}

    def save() -> None:
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "probe_slots.json").write_text(json.dumps(report, indent=2, default=str))

    base, controlnet = bench_engine.build_models(args.work)
    photos, _ = inputs(args.work, 512)
    started = time.monotonic()
    engine = Engine(EngineConfig(profile="real", cache_dir=args.work / "cache", device=torch.device("cuda"),
                                 base_model=base, controlnet=controlnet, fast="on", lora_slots=24))
    report["warmup"] = dict(engine.warmup or {}, engine_start_s=round(time.monotonic() - started, 1))
    log("warm", report["warmup"])
    loras = []
    for i in range(8):
        path = args.work / f"user{i}.safetensors"
        engine.train(train_request(photos[i:] + photos[:i], path, 6, side=512, seed=i), Quiet())
        loras.append(str(path))
    table = SlotTable(engine.models.slots)
    requests = [GenerateRequest(id=f"g{i}", op="generate", prompt=f"{PROMPT} {i}", lora=lora, steps=20, seed=100 + i,
                                width=512, height=512, scheduler="unipc", output_dir=str(args.work / "out"))
                for i, lora in enumerate(loras)]

    def pictures(reqs, fast):
        generations = [Generation(engine.models, r, r.seed, None, table.file(r.lora, 1.0)) for r in reqs]
        while not all(g.done for g in generations):
            denoise_step(engine.models, generations, fast)
        out = []
        for g in generations:
            out += [image for image in g.finish()]
            table.unpin(g.slot)
        return out

    variants = {}
    for half in (True, False):
        multilora.HALF_AT_INFERENCE = half
        for route, fast in (("graphs", engine.fast), ("eager", None)):
            variants[f"{'half' if half else 'fp32'}-{route}-batch8"] = pictures(requests, fast)
        variants[f"{'half' if half else 'fp32'}-graphs-alone"] = [pictures([r], engine.fast)[0] for r in requests]
    multilora.HALF_AT_INFERENCE = True
    reference = StableDiffusionPipeline.from_pretrained(base, torch_dtype=engine.models.dtype,
                                                        safety_checker=None).to("cuda")
    reference.scheduler = UniPCMultistepScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    theirs = []
    for r in requests:
        reference.load_lora_weights(r.lora)
        theirs += reference(r.prompt, generator=[torch.Generator("cpu").manual_seed(r.seed)], num_inference_steps=20,
                            width=512, height=512, negative_prompt="").images
        reference.unload_lora_weights()
    del reference
    torch.cuda.empty_cache()
    report["eight_vs_reference"] = {
        name: {"all": image_diff(images, theirs), "per_user_max_abs": [image_diff([a], [b])["max_abs"]
                                                                       for a, b in zip(images, theirs)]}
        for name, images in variants.items()
    }
    report["half_graphs_batch8_vs_alone"] = image_diff(variants["half-graphs-batch8"], variants["half-graphs-alone"])
    log(json.dumps(report["eight_vs_reference"], indent=1))
    save()

    # The scheduler's training step, one job: where its time goes.
    request = train_request(photos, args.work / "profiled.safetensors", 30, side=512)
    params, pixels, class_photos, _ = engine.prepare_training(request)
    job = SlotTraining(engine.models, params, 0, pixels, class_photos, engine.config.train_rows)
    for _ in range(5):
        shared_step(engine.models.slots, [job], engine.config.train_rows, True)
    sync()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(5):
            shared_step(engine.models.slots, [job], engine.config.train_rows, True)
        sync()
        step_s = (time.perf_counter() - t0) / 5
    job.close()
    events = prof.key_averages()
    cuda_total = sum(e.self_device_time_total for e in events) / 5 / 1000
    report["train_profile"] = {
        "step_ms": step_s * 1000, "gpu_busy_ms_per_step": cuda_total,
        "kernels_per_step": sum(e.count for e in events if e.self_device_time_total > 0) / 5,
        "top_gpu": [(e.key, round(e.self_device_time_total / 5 / 1000, 2), e.count // 5)
                    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:15]],
        "top_cpu": [(e.key, round(e.self_cpu_time_total / 5 / 1000, 2), e.count // 5)
                    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]],
    }
    log(json.dumps(report["train_profile"], indent=1))
    save()
    del engine
    torch.cuda.empty_cache()
    args.skip_restart = False
    report["restart_warmup"] = bench_fast.restart_warmup(args, base, controlnet)
    log(report["restart_warmup"])
    save()


if __name__ == "__main__":
    main()
