"""Issue 8's target table: the engine's fast path beside diffusers' reference, in one process on one card.

    python bench/bench_fast.py --work /tmp/bench            # CUDA: full-size SD1.5, random weights, fp16, 512²
    python bench/bench_fast.py --work /tmp/bench --tiny     # CPU: the tiny profile, to check the script's logic

Rows: LoRA train step b1 r4 (ours: the graphed step; reference: train_dreambooth_lora.py's step re-implemented in
process: VAE encode + latent sample per step, DDPM noise, UNet under fp16 autocast, MSE, backward, clip, AdamW,
zero_grad(set_to_none)); a job at accumulation 2; batch 16 samples/s; /imagine and /pose b1 (ours: fast path, the
PNG included; reference: StableDiffusion(ControlNet)Pipeline + load_lora_weights); 8 users' /imagine with 8 LoRAs
(ours: one batch of 8; reference: 8 calls switching adapters); LoRA switch; warm-up (first start and restart with
inductor's cache); and how far the fast path's images are from the reference pipeline's (same seeds).
Prints one table and writes JSON to bench/results/<card>-<date>.json (and $OUT when set).
"""

import argparse
import contextlib
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "worker" / "engine"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffusers  # noqa: E402
import peft  # noqa: E402
import transformers  # noqa: E402
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline  # noqa: E402
from diffusers import UniPCMultistepScheduler  # noqa: E402
from PIL import Image  # noqa: E402

from portrait_engine.config import EngineConfig  # noqa: E402
from portrait_engine.engine import Engine  # noqa: E402
from portrait_engine.protocol import GenerateRequest, TrainParams, TrainRequest  # noqa: E402

PROMPT = "a portrait photo of sks person as an astronaut"


def log(*args) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


class Quiet:
    def check_cancel(self) -> None:
        pass

    def progress(self, step: int, total: int, loss: float | None = None) -> None:
        pass


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextlib.contextmanager
def switched(module, name: str, value):
    """A module's switch set to `value` inside (an A/B row against the product's default), put back after."""
    previous = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, previous)


def timed(fn, repeats: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - start)
    return {"median_s": statistics.median(runs), "min_s": min(runs)}


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def inputs(work: Path, side: int) -> tuple[list[str], str]:
    rng = np.random.default_rng(0)
    photos = []
    for i in range(16):  # 16 so that a batch of 16 is one full batch
        path = work / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        photos.append(str(path))
    skeleton = np.zeros((side, side, 3), dtype=np.uint8)
    skeleton[side // 5 : side * 4 // 5, side // 2 - 6 : side // 2 + 6] = (255, 0, 0)
    Image.fromarray(skeleton).save(work / "pose.png")
    return photos, str(work / "pose.png")


def train_request(photos, output: Path, steps: int, batch: int = 1, accum: int = 1, side: int = 512, seed: int = 0,
                  mode: str = "lora"):
    return TrainRequest(id=output.stem, op="train", photos=photos, output=str(output),
                        params=TrainParams(max_steps=steps, rank=4, alpha=4, grad_accum=accum, batch_size=batch,
                                           resolution=side, seed=seed, mode=mode))


def engine_training(engine: Engine, photos, work: Path, steps: int, batch: int, accum: int, side: int,
                    mode: str = "lora") -> dict:
    stamps: list[float] = []

    def observe(_training) -> None:
        sync()
        stamps.append(time.perf_counter())

    reset_peak()
    output = work / f"{mode}-b{batch}-a{accum}.safetensors"
    result = engine.train(train_request(photos, output, steps, batch, accum, side, mode=mode), Quiet(),
                          observer=observe)
    steady = np.diff(stamps)[3:]  # the first steps capture the graph
    step = float(np.median(steady))
    return {"step_ms": step * 1000, "samples_per_s": batch * accum / step, "job_s": result.seconds, "steps": steps,
            "peak_gib": peak_gib(), "losses": result.losses[:5], "path": str(output)}


def _script_setup(engine: Engine, params: list, lr: float, photos, side: int) -> tuple:
    """What the DreamBooth scripts set up around their loop: AdamW, the fp16 loss scaler, DDPM, the photos' pixels,
    the prompt's embeddings (--pre_compute_text_embeddings) and fp16 autocast."""
    from diffusers import DDPMScheduler

    from portrait_engine.images import load_photos

    pipe, device = engine.models.pipe, engine.models.device
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    pixels = load_photos(photos, side).to(device, dtype=pipe.vae.dtype)
    tokens = pipe.tokenizer("a photo of sks person", padding="max_length", max_length=77, truncation=True,
                            return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        embeds = pipe.text_encoder(tokens, return_dict=False)[0]
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")
    return optimizer, scaler, noise_scheduler, pixels, embeds, autocast


def reference_training(engine: Engine, photos, steps: int, side: int) -> dict:
    """train_dreambooth_lora.py's step, re-implemented in process on the engine's base modules."""
    import torch.nn.functional as F
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    pipe, device = engine.models.pipe, engine.models.device
    unet, vae = pipe.unet, pipe.vae
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]), adapter_name="reference")
    cast_training_params(unet, dtype=torch.float32)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer, scaler, noise_scheduler, pixels, embeds, autocast = _script_setup(engine, params, 1e-4, photos[:1], side)

    def step():
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (1,), device=device).long()
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        with autocast:
            pred = unet(noisy, timesteps, embeds, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    unet.train()
    reset_peak()
    try:
        result = timed(step, steps, warmup=3)
    finally:
        pipe.unload_lora_weights()
        unet.requires_grad_(False).eval()
    return {"step_ms": result["median_s"] * 1000, "peak_gib": peak_gib()}


def reference_full_training(engine: Engine, photos, steps: int, side: int) -> dict:
    """train_dreambooth.py's optimizer step (full UNet, fp16 mixed precision: float32 weights under autocast,
    AdamW, gradient accumulation 2 as accelerate runs it), re-implemented in process on the engine's base modules."""
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel

    pipe, device = engine.models.pipe, engine.models.device
    vae = pipe.vae
    unet = UNet2DConditionModel.from_pretrained(engine.models.base_path, subfolder="unet", torch_dtype=torch.float32,
                                                local_files_only=True).to(device)
    unet.train()
    optimizer, scaler, noise_scheduler, pixels, embeds, autocast = _script_setup(
        engine, list(unet.parameters()), 5e-6, photos[:2], side)

    def step():
        for micro in range(2):
            with torch.no_grad():
                latents = vae.encode(pixels[micro : micro + 1]).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (1,), device=device).long()
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            with autocast:
                pred = unet(noisy, timesteps, embeds, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise.float(), reduction="mean") / 2
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=False)  # the script's default (--set_grads_to_none off)
        return loss.item()

    reset_peak()
    try:
        result = timed(step, steps, warmup=2)
    finally:
        del unet, optimizer
        torch.cuda.empty_cache()
    return {"step_ms": result["median_s"] * 1000, "peak_gib": peak_gib()}


class Handle:
    """A job as the scheduler sees it (server.Job without the pipe): never cancelled, progress dropped."""

    def __init__(self, request):
        self.request = request

    def is_cancelled(self) -> bool:
        return False

    def check_cancel(self) -> None:
        pass

    def progress(self, step: int, total: int, loss: float | None = None) -> None:
        pass

    def preview(self, step: int, total: int, image: str) -> None:
        pass


def scheduler_training(engine: Engine, photos, work: Path, users: int, steps: int, rows: int | None,
                       bucketed: bool, side: int, graphed: bool = False) -> dict:
    """The scheduler's path: `users` LoRA jobs (each its own photos order, seed and slot) stepped together, as
    Scheduler.tick does: eagerly by multitrain.shared_step, or (`graphed`, what the scheduler runs on CUDA) by
    fast_train.GraphedCohort at the natural batch size; steady time per shared step."""
    from portrait_engine.fast_train import DeviceSide, GraphedCohort
    from portrait_engine.multitrain import SlotTraining, shared_step

    reset_peak()
    jobs = []
    for i in range(users):
        request = train_request(photos[i % 16:] + photos[:i % 16], work / f"sched{i}.safetensors", steps, side=side,
                                seed=i)
        params, pixels, class_photos, _ = engine.prepare_training(request)
        jobs.append(SlotTraining(engine.models, params, i, pixels, class_photos, rows))
        if graphed:
            DeviceSide(jobs[-1])
    cohort = GraphedCohort(engine.models.slots) if graphed else None
    stamps = []
    try:
        for _ in range(steps):
            if graphed:
                outcome = cohort.step(jobs)
            else:
                outcome = shared_step(engine.models.slots, jobs, rows, bucketed)
            assert all(isinstance(v, float) for v in outcome.values()), outcome
            sync()
            stamps.append(time.perf_counter())
    finally:
        for job in jobs:
            job.close()
    step = float(np.median(np.diff(stamps)[2:]))
    return {"users": users, "rows": None if graphed else rows, "bucketed": bucketed, "graphed": graphed,
            "step_ms": step * 1000, "samples_per_s": users / step, "peak_gib": peak_gib(),
            "capture_s": cohort.capture_seconds if graphed else None, "losses_user0": jobs[0].losses[:8]}


def scheduler_job(engine: Engine, photos, work: Path, steps: int, accum: int, side: int, bucketed: bool,
                  deadline_s: float = 150) -> dict:
    """One person's job through the scheduler alone, admit to saved adapter (both formats), warm engine."""
    from portrait_engine.scheduler import Scheduler

    ended = []
    scheduler = Scheduler(engine, ended.append, train_rows=engine.config.train_rows or None, train_buckets=bucketed)
    request = train_request(photos, work / f"sched-job-{bucketed}.safetensors", steps, accum=accum, side=side)
    reset_peak()
    sync()
    started = time.perf_counter()
    assert scheduler.admit(Handle(request)) == "joined"
    while not scheduler.idle:
        scheduler.tick()
        if time.perf_counter() - started > deadline_s:  # a bound on the bench's time, not the job's
            scheduler.cancel_all()
            raise TimeoutError(f"the job took over {deadline_s} s")
    sync()
    wall = time.perf_counter() - started
    assert type(ended[0]).__name__ == "TrainResult", ended
    return {"steps": steps, "accum": accum, "bucketed": bucketed, "job_s": wall, "per_step_ms": wall / steps * 1000,
            "peak_gib": peak_gib()}


def graphed_resume(engine: Engine, photos, work: Path, side: int, steps: int = 6) -> dict:
    """A graphed slot job checkpointed halfway (its generator read after graph replays, the capturable AdamW's
    state, the device-side scaler), resumed in a new graphed job: its later losses against the uninterrupted run."""
    import io

    from portrait_engine.fast_train import DeviceSide, GraphedCohort
    from portrait_engine.multitrain import SlotTraining

    def job() -> SlotTraining:
        request = train_request(photos, work / "resume.safetensors", steps, side=side, seed=3)
        params, pixels, _, _ = engine.prepare_training(request)
        made = SlotTraining(engine.models, params, 0, pixels, None, None)
        DeviceSide(made)
        return made

    first, saved = job(), io.BytesIO()
    try:
        cohort = GraphedCohort(engine.models.slots)
        while first.step_count < steps:
            cohort.step([first])
            if first.step_count == steps // 2:
                torch.save(first.state_dict(), saved)
    finally:
        first.close()
    second = job()
    try:
        saved.seek(0)
        second.load_state_dict(torch.load(saved, weights_only=True))
        cohort = GraphedCohort(engine.models.slots)
        while second.step_count < steps:
            cohort.step([second])
    finally:
        second.close()
    later = slice(steps // 2, steps)
    return {"uninterrupted": first.losses[later], "resumed": second.losses[later],
            "max_rel_diff": max(abs(x - y) / abs(y) for x, y in zip(first.losses[later], second.losses[later]))}


def losses_apart(report: dict, ours: str, theirs: str) -> dict:
    """Largest relative difference of user 0's losses between two training rows (same job, same draws)."""
    a, b = report[ours]["losses_user0"], report[theirs]["losses_user0"]
    return {"rows": [ours, theirs], "max_rel_diff": max(abs(x - y) / abs(y) for x, y in zip(a, b))}


def scheduled_imagine(scheduler, ended: list, lora: str, work: Path, side: int, steps: int):
    """A function painting one /imagine through `scheduler` (admit to PNG written); returns its seconds."""

    def imagine(i: int) -> float:
        request = GenerateRequest(id=f"busy{i}", op="generate", prompt=f"{PROMPT} {i}", lora=lora, steps=steps,
                                  seed=i, width=side, height=side, scheduler="unipc", output_dir=str(work / "busy"))
        started = time.perf_counter()
        assert scheduler.admit(Handle(request)) == "joined"
        while any(t.generation is not None for t in scheduler.active):
            scheduler.tick()
        sync()
        assert type(ended[-1]).__name__ == "GenerateResult", ended[-1]
        return time.perf_counter() - started

    return imagine


def imagine_stream(engine: Engine, loras: list[str], work: Path, side: int, steps: int, total: int = 32,
                   width: int = 8) -> dict:
    """A stream of /imagine requests through the scheduler, the users' LoRAs in turn: one admitted per tick while
    fewer than `width` are held, so requests join and leave at different steps (continuous batching; the PNG files
    of one tick's finished requests made while the next step runs). Images/s over the whole stream, and each
    request's admit-to-result seconds."""
    from portrait_engine.scheduler import Scheduler

    scheduler = Scheduler(engine, lambda event: None, train_rows=engine.config.train_rows or None)

    def stream(count: int) -> tuple[float, list[float]]:
        ended: list = []
        scheduler.emit = ended.append
        pending = [GenerateRequest(id=f"stream{i}", op="generate", prompt=f"{PROMPT} {i}", lora=loras[i % len(loras)],
                                   steps=steps, seed=300 + i, width=side, height=side, scheduler="unipc",
                                   output_dir=str(work / "stream" / str(i))) for i in range(count)]
        admitted, latencies = {}, []
        sync()
        started = time.perf_counter()
        while pending or not scheduler.idle:
            if pending and len(scheduler.jobs()) < width:
                request = pending.pop(0)
                admitted[request.id] = time.perf_counter()
                assert scheduler.admit(Handle(request)) == "joined"
            scheduler.tick()
            while len(latencies) < len(ended):
                event = ended[len(latencies)]
                assert type(event).__name__ == "GenerateResult", event
                latencies.append(time.perf_counter() - admitted[event.id])
        sync()
        return time.perf_counter() - started, latencies

    stream(len(loras))  # each user's LoRA in its slot once, untimed
    seconds, latencies = stream(total)
    return {"requests": total, "width": width, "seconds": seconds, "images_per_s": total / seconds,
            "latency_p50_s": float(np.percentile(latencies, 50)), "latency_p95_s": float(np.percentile(latencies, 95))}


def imagine_profile(engine: Engine, lora: str, work: Path, side: int, steps: int) -> dict:
    """Where an idle /imagine's time goes through the scheduler: phases timed with a device sync around each
    (admission = prompt encoding and set-up, the finish = VAE decode and check, the rest = the denoising ticks and
    the PNG), then a
    torch.profiler table of one more run."""
    from portrait_engine import scheduler as scheduler_module
    from portrait_engine.multigen import Generation

    phases = {"admit": [], "finish": []}

    def timed_phase(name, fn):
        def wrapper(*a, **k):
            sync()
            started = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                sync()
                phases[name].append(time.perf_counter() - started)
        return wrapper

    ended: list = []
    scheduler = scheduler_module.Scheduler(engine, ended.append)
    imagine = scheduled_imagine(scheduler, ended, lora, work, side, steps)
    for i in range(3):
        imagine(i)
    originals = (scheduler_module.Generation, scheduler_module.decode_together)
    scheduler_module.Generation = timed_phase("admit", Generation)
    scheduler_module.decode_together = timed_phase("finish", scheduler_module.decode_together)
    try:
        walls = [imagine(10 + i) for i in range(5)]
    finally:
        scheduler_module.Generation, scheduler_module.decode_together = originals
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        imagine(99)
    averages = prof.key_averages()
    median = lambda xs: float(np.median(xs)) * 1000  # noqa: E731
    return {"wall_ms": median(walls), "admit_ms": median(phases["admit"]), "finish_ms": median(phases["finish"]),
            "denoise_ms": median(walls) - median(phases["admit"]) - median(phases["finish"]),
            "by_self_cpu": averages.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60),
            "by_device": averages.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=60)}


def imagine_beside_trainings(engine: Engine, photos, work: Path, lora: str, side: int, steps: int, repeats: int,
                             trainings: int, share: float | None, bucketed: bool) -> dict:
    """/imagine latency (admit to result, PNG written) through the scheduler, idle and with `trainings` LoRA
    trainings running beside it."""
    from portrait_engine.scheduler import TRAIN_SHARE, Scheduler

    ended = []
    scheduler = Scheduler(engine, ended.append, train_rows=engine.config.train_rows or None,
                          train_buckets=bucketed, train_share=TRAIN_SHARE if share is None else share)
    imagine = scheduled_imagine(scheduler, ended, lora, work, side, steps)

    idle = [imagine(i) for i in range(2 + repeats)][2:]
    for i in range(trainings):
        request = train_request(photos[i:] + photos[:i], work / f"busy-t{i}.safetensors", 20_000, side=side, seed=i)
        assert scheduler.admit(Handle(request)) == "joined"
    for _ in range(5):
        scheduler.tick()
    steps_before = [t.training.step_count for t in scheduler.active]
    started = time.perf_counter()
    busy = [imagine(100 + i) for i in range(2 * repeats)]
    seconds = time.perf_counter() - started
    steps_taken = sum(t.training.step_count for t in scheduler.active) - sum(steps_before)
    scheduler.cancel_all()
    pct = lambda xs, q: float(np.percentile(xs, q))  # noqa: E731
    return {"trainings": trainings, "share": scheduler.train_share, "bucketed": bucketed,
            "idle_p50_s": pct(idle, 50), "idle_p95_s": pct(idle, 95), "busy_p50_s": pct(busy, 50),
            "busy_p95_s": pct(busy, 95), "ratio_p95": pct(busy, 95) / pct(idle, 95),
            "training_samples_per_s_meanwhile": steps_taken / seconds}


def image_diff(ours: list[Image.Image], theirs: list[Image.Image]) -> dict:
    a = np.stack([np.asarray(i, dtype=np.float32) for i in ours])
    b = np.stack([np.asarray(i, dtype=np.float32) for i in theirs])
    mse = float(((a - b) ** 2).mean())
    return {"max_abs": float(np.abs(a - b).max()), "mean_abs": float(np.abs(a - b).mean()),
            "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))}


def graph_replays_ms(fast) -> dict[str, float]:
    """One replay of each captured UNet call (median of 20), named by kind, batch and whether it is compiled."""
    return {
        f"{'controlnet+unet' if cn else 'unet'}@{rows // 2}{' compiled' if g.compiled else ''}":
            timed(g.run, 20, warmup=3)["median_s"] * 1000
        for (cn, rows), g in fast.graphs.items()
    }


def generation(engine: Engine, base: Path, controlnet_path: Path, loras: list[str], pose: str, work: Path,
               repeats: int, side: int, steps: int, smoke: bool = False) -> dict:
    out = work / "out"
    dtype = engine.models.dtype
    device = engine.models.device

    def request(lora, control=None, seed=7, i=0):
        return GenerateRequest(id=f"g{i}", op="generate", prompt=f"{PROMPT} {i}", lora=lora, control_image=control,
                               steps=steps, seed=seed, width=side, height=side, scheduler="unipc",
                               output_dir=str(out))

    from portrait_engine.engine import encode_together, finish_generation
    from portrait_engine.multigen import Generation, decode_together, denoise_step
    from portrait_engine.scheduler import SlotTable

    table = SlotTable(engine.models.slots)
    pose_image = Image.open(pose).convert("RGB")

    def scheduled(reqs, control=None, save=True, phases=None):
        """Requests denoised together as the engine's scheduler does it (its tick, without the server around it).
        With `phases` (a dict), each phase's seconds are appended to it, a device sync closing each."""
        started = mark = time.monotonic()

        def phase(name):
            nonlocal mark
            if phases is not None:
                sync()
                now = time.monotonic()
                phases.setdefault(name, []).append(now - mark)
                mark = now

        generations = [Generation(engine.models, r, r.seed, control,
                                  table.file(r.lora, r.lora_scale) if r.lora else -1, engine.fast) for r in reqs]
        phase("admit")
        while not all(g.done for g in generations):
            denoise_step(engine.models, generations, engine.fast)
        phase("denoise")
        decoded = decode_together(generations)  # as the scheduler decodes the requests done on one step
        images = [decoded[g] for g in generations]
        phase("decode")
        for g in generations:
            if g.slot >= 0:
                table.unpin(g.slot)
        if save:
            for r, g, group, files in zip(reqs, generations, images, encode_together(images)):
                finish_generation(r.model_copy(update={"output_dir": str(out / r.id)}), group, g.seed, started, files)
        phase("png")
        return images

    def phased(reqs, control=None, repeats=3) -> dict:
        phases: dict = {}
        for _ in range(repeats):
            scheduled(reqs, control, phases=phases)
        return {name: float(np.median(times)) * 1000 for name, times in phases.items()}

    res: dict = {}
    reset_peak()
    res["imagine_ours"] = timed(lambda: scheduled([request(loras[0])]), repeats)
    # To the images in memory, the reference's endpoint (imagine_ours also writes the PNG, as the engine does).
    res["imagine_ours_images"] = timed(lambda: scheduled([request(loras[0])], save=False), repeats)
    res["pose_ours"] = timed(lambda: scheduled([request(loras[0], pose)], pose_image), repeats)
    res["gen_peak_gib"] = peak_gib()
    import portrait_engine.multigen as multigen

    fast = engine.fast
    requests = [request(lora, i=i, seed=100 + i) for i, lora in enumerate(loras[:8])]
    res["eight_ours"] = timed(lambda: scheduled(requests), max(3, repeats // 2))
    # diffusers' UniPC step request by request (the path before 2026-12-07's unipc_plan), and two of its variants.
    with switched(multigen, "PLANNED_UNIPC", False):
        res["eight_ours_diffusers_steps"] = timed(lambda: scheduled(requests), max(3, repeats // 2))
        stepped_by_diffusers = [g[0] for g in scheduled(requests, save=False)]
        res["imagine_ours_diffusers_steps"] = timed(lambda: scheduled([request(loras[0])]), repeats)
        with switched(multigen, "SIGMAS_ON_DEVICE", False):  # diffusers' own placement: UniPC's sigmas on the CPU
            res["imagine_ours_sigmas_on_cpu"] = timed(lambda: scheduled([request(loras[0])]), repeats)
        with switched(multigen, "SOLVE_WITHOUT_SYNC", False):  # diffusers' solve: a device sync every UniPC step
            res["imagine_ours_solve_syncs"] = timed(lambda: scheduled([request(loras[0])]), repeats)
    res["diff_eight_planned_vs_diffusers_steps"] = image_diff(
        [g[0] for g in scheduled(requests, save=False)], stepped_by_diffusers)
    res["imagine_phases_ms"] = phased([request(loras[0])])
    res["eight_phases_ms"] = phased(requests)
    # Where /imagine's time goes: one replay of each captured call, the VAE decode, the prompt encoding, a PNG.
    res["graph_step_ms"] = graph_replays_ms(fast)
    res["lora_ab_uncompiled_ms"] = lora_ab(engine, loras)
    pipe = __import__("portrait_engine.generate", fromlist=["_derive"])._derive(engine.models, "unipc", False)
    latents = torch.randn(1, 4, side // 8, side // 8, device=device, dtype=dtype)

    def decode():
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True])

    import portrait_engine.fast as fast_module

    with torch.no_grad():
        res["vae_decode_b1_ms"] = timed(decode, 10)["median_s"] * 1000
        decoder, compiled = pipe.vae.decoder, vars(pipe.vae.decoder).get("forward")
        z = latents / pipe.vae.config.scaling_factor
        if compiled is not None:  # ENGINE_FAST_COMPILE_VAE: the rows below are the decoder's own (eager) forward
            quick = pipe.vae.decode(z, return_dict=False)[0].float()
            del decoder.forward
        try:
            if compiled is not None:
                res["vae_decode_b1_eager_ms"] = timed(decode, 10)["median_s"] * 1000
                slow = pipe.vae.decode(z, return_dict=False)[0].float()
                res["vae_compiled_vs_eager_max_255"] = ((quick - slow).abs().max() * 127.5).item()  # [-1, 1]: bytes
            rows, fast_module.CHUNKED_GROUP_NORM_MAX_ROWS = fast_module.CHUNKED_GROUP_NORM_MAX_ROWS, 0
            try:
                res["vae_decode_b1_torch_group_norm_ms"] = timed(decode, 10)["median_s"] * 1000  # before chunking
            finally:
                fast_module.CHUNKED_GROUP_NORM_MAX_ROWS = rows
        finally:
            if compiled is not None:
                decoder.forward = compiled
        res["encode_prompt_ms"] = timed(lambda: pipe.encode_prompt(PROMPT, device, 1, True, ""), 10)["median_s"] * 1000
        with engine.models.slots.use([-1]), fast.encoding():
            res["encode_prompt_graph_ms"] = timed(lambda: pipe.encode_prompt(PROMPT, device, 1, True, ""),
                                                  10)["median_s"] * 1000
    from portrait_engine.images import png_bytes, png_many, save_pngs
    image = decode()
    res["png_b1_ms"] = timed(lambda: save_pngs(image, out / "png"), 10)["median_s"] * 1000
    # Eight requests' images ending on one step: made one after the other, and at once (encode_together).
    eight = [image[0].rotate(90 * (i % 4)) for i in range(8)]
    res["png_8_one_by_one_ms"] = timed(lambda: [png_bytes(x) for x in eight], 10)["median_s"] * 1000
    res["png_8_together_ms"] = timed(lambda: png_many(eight), 10)["median_s"] * 1000
    res["png_pil_b1_ms"] = timed(lambda: image[0].save(out / "pil.png", format="PNG", compress_level=1),
                                 10)["median_s"] * 1000  # what save_pngs did before its striped encoder
    # A user switch: a LoRA file loaded into a slot (users already in a slot switch by index alone: no copy).
    res["switch_ours_ms"] = timed(lambda: engine.models.slots.load_slot_file(7, loras[1], 1.0), 20)["median_s"] * 1000
    engine.models.slots.clear_slot(7)
    ours_images = scheduled([request(loras[0])], save=False)[0]
    ours_pose = scheduled([request(loras[0], pose)], pose_image, save=False)[0]
    ours_eight = scheduled(requests, save=False)
    if smoke:
        # No reference pipelines: the graphs against the scheduler's own eager calls, same requests.
        engine.fast = None
        try:
            res["diff_imagine"] = image_diff(ours_images, scheduled([request(loras[0])], save=False)[0])
            res["diff_pose"] = image_diff(ours_pose, scheduled([request(loras[0], pose)], pose_image, save=False)[0])
            res["diff_eight"] = image_diff([g[0] for g in ours_eight], [g[0] for g in scheduled(requests, save=False)])
            res["imagine_eager"] = timed(lambda: scheduled([request(loras[0])]), repeats)
        finally:
            engine.fast = fast
        return res

    log("reference pipelines")
    reference = StableDiffusionPipeline.from_pretrained(base, torch_dtype=dtype, safety_checker=None).to(device)
    reference.scheduler = UniPCMultistepScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(loras[0])
    control = StableDiffusionControlNetPipeline(
        **reference.components, controlnet=ControlNetModel.from_pretrained(controlnet_path, torch_dtype=dtype).to(device)
    )
    control.set_progress_bar_config(disable=True)

    def gen(seed):
        return [torch.Generator("cpu").manual_seed(seed)]

    kw = dict(num_inference_steps=steps, width=side, height=side, negative_prompt="")
    res["imagine_ref"] = timed(lambda: reference(f"{PROMPT} 0", generator=gen(7), **kw), repeats)
    res["pose_ref"] = timed(lambda: control(f"{PROMPT} 0", image=pose_image, generator=gen(7), **kw), repeats)
    res["diff_imagine"] = image_diff(ours_images, reference(f"{PROMPT} 0", generator=gen(7), **kw).images)
    res["diff_pose"] = image_diff(ours_pose, control(f"{PROMPT} 0", image=pose_image, generator=gen(7), **kw).images)

    def switch_ref():
        for path in (loras[1], loras[0]):
            reference.unload_lora_weights()
            reference.load_lora_weights(path)

    res["switch_ref_ms"] = timed(switch_ref, max(3, repeats // 2))["median_s"] * 500
    reference.unload_lora_weights()
    for i, lora in enumerate(loras[:8]):
        reference.load_lora_weights(lora, adapter_name=f"u{i}")

    def eight_ref():
        images = []
        for i, r in enumerate(requests):
            reference.set_adapters([f"u{i}"])
            images += reference(r.prompt, generator=gen(r.seed), **kw).images
        return images

    res["eight_ref"] = timed(eight_ref, max(3, repeats // 2), warmup=1)
    res["diff_eight"] = image_diff([g[0] for g in ours_eight], eight_ref())
    del reference, control
    return res


def lora_ab(engine: Engine, loras: list[str]) -> dict:
    """The slot LoRA's ways, each captured uncompiled in this process: one image (CFG's 2 rows) with the slot layers
    (rows hoisted) and the plain UNet that a merged graph runs (on weights holding the LoRA: SlotMerge); 8 users'
    images (16 rows) with rows hoisted once per layer group and gathered in every layer; the merge's add and
    restore alone (once per request, FastGenerator.settle)."""
    from dataclasses import replace

    from portrait_engine.fast import StepGraph

    fast, slots = engine.fast, engine.models.slots
    settings, hoist = fast.settings, fast.hoist
    for slot, lora in enumerate(loras[:8]):
        slots.load_slot_file(16 + slot, lora, 1.0)
    eight = [16 + i for i in range(len(loras[:8])) for _ in (0, 1)]
    res = {}
    try:
        for name, batch, merged, groups, index in (
            ("b1_slot_layers", 1, (), hoist, [16, 16]), ("b1_merged", 1, (1,), hoist, [16, 16]),
            ("b8_hoisted", 8, (), hoist, eight), ("b8_per_layer", 8, (), [], eight),
        ):
            fast.settings, fast.hoist = replace(settings, compile_batches=(), merged_batches=merged), groups
            step = fast._build(False, batch)
            with slots.forced_live(step.live), slots.use(index):
                res[name] = timed(step.run, 20, warmup=3)["median_s"] * 1000
        merge = StepGraph(rows=2, body=lambda: (fast.merge.add(), fast.merge.restore()), buffers={})
        fast._capture(merge, frozenset())
        with slots.use([16, 16]):
            res["merge_add_restore_eager"] = timed(merge.body, 20)["median_s"] * 1000
            res["merge_add_restore_graph"] = timed(merge.run, 20)["median_s"] * 1000
    finally:
        fast.settings, fast.hoist = settings, hoist
        for slot in range(len(loras[:8])):
            slots.clear_slot(16 + slot)
    return res


def restart_warmup(args, base: Path, controlnet: Path) -> dict | None:
    """A second engine process on the same inductor cache: what a restart costs."""
    code = (
        "import faulthandler; faulthandler.enable();"  # a crash's Python stack on stderr
        "import logging; logging.basicConfig(level=logging.INFO, format='%%(asctime)s %%(name)s: %%(message)s');"
        "import sys, json, torch; sys.path.insert(0, %r);"
        "from portrait_engine.config import EngineConfig; from portrait_engine.engine import Engine;"
        "e = Engine(EngineConfig(profile='real', cache_dir=__import__('pathlib').Path(%r), device=torch.device('cuda'),"
        " base_model=__import__('pathlib').Path(%r), controlnet=__import__('pathlib').Path(%r), fast='on',"
        " lora_slots=24));"
        "print('WARMUP ' + json.dumps(e.warmup))"
    ) % (str(ROOT / "worker" / "engine"), str(args.work / "cache"), str(base), str(controlnet))
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=args.restart_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.restart_timeout} s"}
    line = next((l for l in done.stdout.splitlines() if l.startswith("WARMUP ")), None)
    if line is None:
        return {"error": f"exit {done.returncode}: {done.stderr[-3000:]}"}
    info = json.loads(line[7:])
    info["process_s"] = round(time.monotonic() - started, 1)
    info["log"] = [l for l in done.stderr.splitlines() if "portrait_engine" in l][-20:]
    return info


def main() -> None:
    import faulthandler
    import logging
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `timeout -s USR1`: where a run is stuck

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "torch", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny profile: checks the logic, times nothing real")
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--job-steps", type=int, default=100, help="steps of the accumulation-2 job")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-restart", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="generation only, against the scheduler's eager path (no references, no training rows; "
                             "no restart unless --only names it)")
    parser.add_argument("--restart-timeout", type=int, default=240)
    parser.add_argument("--build-timeout", type=int, default=420, help="ENGINE_FAST_AOT: the first start's builds")
    parser.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if args.tiny:
        side, steps = 64, 4
        os.environ.setdefault("ENGINE_FAST_SIZE", "64x64")
        from portrait_engine.tiny import ensure_tiny_models

        base, controlnet = ensure_tiny_models(args.work / "cache")
        config = EngineConfig(profile="tiny", cache_dir=args.work / "cache", device=torch.device("cpu"), fast="on",
                              lora_slots=24)
    else:
        import bench_engine

        side, steps = 512, 20
        base, controlnet = bench_engine.build_models(args.work)
        config = EngineConfig(profile="real", cache_dir=args.work / "cache", device=torch.device("cuda"),
                              base_model=base, controlnet=controlnet, fast="on", lora_slots=24)
    photos, pose = inputs(args.work, side)
    log("engine start + warm-up")
    reset_peak()
    t0 = time.monotonic()
    engine = Engine(config)
    # A/B switch for the training rows (it changes no product code). The weights' layout is the engine's own
    # setting now (ENGINE_FAST_CHANNELS_LAST=1, applied before anything is captured).
    if os.environ.get("BENCH_CUDNN_BENCHMARK") == "1":
        torch.backends.cudnn.benchmark = True
    warmup = dict(engine.warmup or {}, engine_start_s=round(time.monotonic() - t0, 1))
    log("warm-up", warmup)
    if engine.fast is not None and engine.fast.building:  # ENGINE_FAST_AOT's first start: ready now, compiled later
        warmup["graph_step_ms_before_builds"] = graph_replays_ms(engine.fast)  # beside the compiled ones, same run
        log("waiting for the compiled modules' builds", warmup["graph_step_ms_before_builds"])
        engine.fast.wait_for_builds(timeout=args.build_timeout)
        engine.warmup = engine.fast.info
        warmup["full_speed_s"] = round(time.monotonic() - t0, 1)  # from the engine's start to the last swap
        warmup["after_builds"] = engine.fast.info
        log("compiled modules in place", warmup)

    report: dict = {
        "date": datetime.date.today().isoformat(),
        "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "warmup": warmup,
    }

    def save() -> None:
        text = json.dumps(report, indent=2, default=str)
        card = re.sub(r"[^A-Za-z0-9]+", "-", report["card"]).strip("-").lower()
        if not args.tiny:  # the tiny run checks logic; its figures are not results
            results = ROOT / "bench" / "results"
            results.mkdir(exist_ok=True)
            (results / f"{card}-{report['date']}.json").write_text(text)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "bench_fast.json").write_text(text)

    report["errors"] = {}

    def section(name: str, fn):
        """Runs one row; a failure is recorded and the rest of the table still gets measured."""
        import traceback

        if only and name not in only:
            return report.get(name)
        log(name)
        try:
            report[name] = fn()
            log(name, report[name])
        except Exception:
            report["errors"][name] = traceback.format_exc()[-3000:]
            log(name, "FAILED", report["errors"][name])
        save()
        return report.get(name)

    if not args.smoke:
        def train_b1():
            return engine_training(engine, photos, args.work, args.train_steps, 1, 1, side)

        if section("train_b1", train_b1) is None and "train_b1" in report["errors"]:
            engine.fast_training = False  # the LoRAs generation needs, trained eagerly
            section("train_b1_eager_fallback", train_b1)
            report["train_b1"] = report.get("train_b1_eager_fallback")

        def versus_eager(graphed_key: str, steps: int, accum: int = 1, mode: str = "lora"):
            # The same job stepped eagerly (Training.step): how close the graphed step's losses are.
            engine.fast_training = False
            try:
                eager = engine_training(engine, photos, args.work, steps, 1, accum, side, mode=mode)
            finally:
                engine.fast_training = True
            graphed = report[graphed_key]["losses"]
            return {"eager_step_ms": eager["step_ms"], "losses_graphed": graphed, "losses_eager": eager["losses"],
                    "max_rel_diff": max(abs(a - b) / abs(b) for a, b in zip(graphed, eager["losses"]))}

        if "train_b1" not in report["errors"]:
            section("train_b1_vs_eager", lambda: versus_eager("train_b1", 10))
        section("train_job_a2", lambda: engine_training(engine, photos, args.work, args.job_steps, 1, 2, side))
        section("train_b16", lambda: engine_training(engine, photos, args.work, max(12, args.train_steps // 3), 16, 1, side))
        section("train_ref", lambda: reference_training(engine, photos, max(10, args.train_steps // 2), side))
        # Full-UNet DreamBooth (the engine's graphed step; then its eager one, the script's own step), accumulation 2,
        # beside the script's.
        section("train_full_a2", lambda: engine_training(engine, photos, args.work, 12, 1, 2, side, mode="full"))
        if "train_full_a2" not in report["errors"]:
            section("train_full_a2_vs_eager", lambda: versus_eager("train_full_a2", 12, 2, "full"))
        section("train_full_ref", lambda: reference_full_training(engine, photos, 10, side))
        # The scheduler's path (what the worker runs): slot trainings stepped together by shared_step.
        n = max(12, args.train_steps // 2)
        rows = engine.config.train_rows or None
        section("sched_b1_full", lambda: scheduler_training(engine, photos, args.work, 1, n, rows, False, side))
        section("sched_b1_bucket", lambda: scheduler_training(engine, photos, args.work, 1, n, rows, True, side))
        section("sched_4_bucket", lambda: scheduler_training(engine, photos, args.work, 4, n, rows, True, side))
        section("sched_16_rows8", lambda: scheduler_training(engine, photos, args.work, 16, n, rows, False, side))
        section("sched_16_rows16", lambda: scheduler_training(engine, photos, args.work, 16, n, 16, False, side))
        # The scheduler's graphed path on CUDA, and how far a job's losses move with it: graphed vs the eager
        # shared step, and alone vs among 15 others (both graphed).
        for users in (1, 4, 16):
            section(f"sched_{users}_graph", lambda u=users: scheduler_training(engine, photos, args.work, u, n, rows,
                                                                                False, side, graphed=True))
        section("sched_graph_vs_eager", lambda: losses_apart(report, "sched_1_graph", "sched_b1_full"))
        section("sched_alone_vs_16", lambda: losses_apart(report, "sched_1_graph", "sched_16_graph"))
        section("sched_graph_resume", lambda: graphed_resume(engine, photos, args.work, side))
        section("sched_job_a2", lambda: scheduler_job(engine, photos, args.work, args.job_steps, 2, side, False))
    engine.fast_training = False if report["errors"] else engine.fast_training
    loras = [report["train_b1"]["path"]] if report.get("train_b1") and not args.smoke else []
    painting = not only or "generation" in only or any(name.startswith("imagine_") for name in only)
    for i in range(len(loras), 8 if painting else 0):  # more users: short jobs of their own
        path = args.work / f"user{i}.safetensors"
        engine.train(train_request(photos[i:] + photos[:i], path, 4, side=side, seed=i), Quiet())
        loras.append(str(path))
    section("imagine_profile", lambda: imagine_profile(engine, loras[0], args.work, side, steps))
    section("generation", lambda: generation(engine, base, controlnet, loras, pose, args.work, args.repeats, side, steps,
                                                args.smoke))
    section("imagine_stream", lambda: imagine_stream(engine, loras, args.work, side, steps))

    def stream_diffusers_steps():
        import portrait_engine.multigen as multigen

        with switched(multigen, "PLANNED_UNIPC", False):  # diffusers' UniPC step request by request
            return imagine_stream(engine, loras, args.work, side, steps)

    section("imagine_stream_diffusers_steps", stream_diffusers_steps)
    for trainings, share in ((4, None), (4, 1.0)):
        section(f"imagine_beside_{trainings}_share{share or 'default'}", lambda t=trainings, s=share: imagine_beside_trainings(
            engine, photos, args.work, loras[0], side, steps, max(5, args.repeats), t, s, True))
    if not args.tiny and not args.skip_restart and ("restart" in only or not (only or args.smoke)):
        log("restart warm-up")
        del engine
        torch.cuda.empty_cache()
        report["restart_warmup"] = restart_warmup(args, base, controlnet)
        log(report["restart_warmup"])
    report["total_s"] = round(time.monotonic() - started, 1)
    save()
    try:
        if args.smoke:
            print(json.dumps(report.get("generation"), indent=1, default=str))
        else:
            print_table(report)
    except (KeyError, TypeError) as error:
        print("table incomplete:", error, "errors:", list(report["errors"]))


def print_table(r: dict) -> None:
    g = r["generation"]
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    rows = [
        ("LoRA train step b1 r4", f"{r['train_b1']['step_ms']:.1f} ms", f"{r['train_ref']['step_ms']:.1f} ms",
         r["train_ref"]["step_ms"] / r["train_b1"]["step_ms"], r["train_b1"]["peak_gib"], "≤ 20 ms, ≥ 10×"),
        (f"job {r['train_job_a2']['steps']} steps × accum 2 (wall)", f"{r['train_job_a2']['job_s']:.1f} s", "", None,
         r["train_job_a2"]["peak_gib"], "1000 steps ≤ 45 s"),
        ("train b16 (one LoRA) samples/s", f"{r['train_b16']['samples_per_s']:.1f}",
         f"{1000 / r['train_ref']['step_ms']:.1f}", r["train_b16"]["samples_per_s"] * r["train_ref"]["step_ms"] / 1000,
         r["train_b16"]["peak_gib"], "≥ 150 /s"),
        ("/imagine 20 steps + LoRA b1", ms(g["imagine_ours"]["median_s"]), ms(g["imagine_ref"]["median_s"]),
         g["imagine_ref"]["median_s"] / g["imagine_ours"]["median_s"], g["gen_peak_gib"], "≤ 150 ms"),
        ("/pose ControlNet + LoRA b1", ms(g["pose_ours"]["median_s"]), ms(g["pose_ref"]["median_s"]),
         g["pose_ref"]["median_s"] / g["pose_ours"]["median_s"], None, "≤ 250 ms"),
        ("8 users' /imagine, 8 LoRAs (img/s)", f"{8 / g['eight_ours']['median_s']:.2f}",
         f"{8 / g['eight_ref']['median_s']:.2f}", g["eight_ref"]["median_s"] / g["eight_ours"]["median_s"], None,
         "≥ 10 img/s"),
        ("LoRA switch (file into a slot)", f"{g['switch_ours_ms']:.3f} ms", f"{g['switch_ref_ms']:.1f} ms",
         g["switch_ref_ms"] / g["switch_ours_ms"], None, "≤ 1 ms"),
        ("warm-up, first start", f"{r['warmup'].get('warmup_s')} s", "", None, r["warmup"].get("peak_gib"), "≤ 120 s"),
    ]
    if "full_speed_s" in r["warmup"]:
        rows.append(("first start to the compiled modules", f"{r['warmup']['full_speed_s']} s", "", None, None, ""))
    if isinstance(r.get("restart_warmup"), dict) and "warmup_s" in r["restart_warmup"]:
        rows.append(("warm-up, restart (packages / inductor cache)", f"{r['restart_warmup']['warmup_s']} s", "", None, None,
                     "≤ 20 s"))
    print(f"\n{r['card']}, {r['date']}, torch {r['versions']['torch']}, diffusers {r['versions']['diffusers']}")
    print(f"{'workload':<40} {'ours':>12} {'reference':>12} {'ratio':>7} {'peak GiB':>9}  target")
    for name, ours, ref, ratio, peak, target in rows:
        print(f"{name:<40} {ours:>12} {ref:>12} {'' if ratio is None else f'{ratio:.1f}×':>7} "
              f"{'' if peak is None else peak:>9}  {target}")
    for key in ("diff_imagine", "diff_pose", "diff_eight"):
        print(f"fast vs reference images, {key[5:]}: {g[key]}")
    print("graph replays (ms):", {k: round(v, 2) for k, v in g["graph_step_ms"].items()})
    print("the slot LoRA's ways, uncompiled graphs (ms):", {k: round(v, 2) for k, v in g["lora_ab_uncompiled_ms"].items()})
    print("\nthe scheduler's path (slot trainings in shared_step; what the worker runs):")
    for key in ("sched_b1_full", "sched_b1_bucket", "sched_4_bucket", "sched_16_rows8", "sched_16_rows16",
                "sched_1_graph", "sched_4_graph", "sched_16_graph"):
        if key in r:
            print(f"  {key:<18} {r[key]['step_ms']:8.1f} ms/step {r[key]['samples_per_s']:8.1f} samples/s "
                  f"peak {r[key]['peak_gib']} GiB")
    for key in ("sched_graph_vs_eager", "sched_alone_vs_16"):
        if key in r:
            print(f"  losses {key}: max relative difference {r[key]['max_rel_diff']:.2e}")
    if "sched_job_a2" in r:
        print(f"  job {r['sched_job_a2']['steps']} steps x accum 2: {r['sched_job_a2']['job_s']:.1f} s wall")
    print(f"  /imagine, diffusers' UniPC step with its sigmas on the CPU (diffusers' placement): "
          f"{g['imagine_ours_sigmas_on_cpu']['median_s'] * 1000:.1f} ms; with its syncing solve: "
          f"{g['imagine_ours_solve_syncs']['median_s'] * 1000:.1f} ms")
    for key in [k for k in r if k.startswith("imagine_stream")]:
        st = r[key]
        print(f"  {key}: {st['requests']} /imagine, at most {st['width']} at once: {st['images_per_s']:.2f} img/s, "
              f"latency p50 {st['latency_p50_s'] * 1000:.0f} / p95 {st['latency_p95_s'] * 1000:.0f} ms")
    print(f"  diffusers' UniPC step request by request: 8 users {g['eight_ours_diffusers_steps']['median_s'] * 1000:.1f}"
          f" ms, /imagine {g['imagine_ours_diffusers_steps']['median_s'] * 1000:.1f} ms (planned: "
          f"{g['eight_ours']['median_s'] * 1000:.1f}, {g['imagine_ours']['median_s'] * 1000:.1f} ms)")
    for key in [k for k in r if k.startswith("imagine_beside_")]:
        b = r[key]
        print(f"  {key}: idle p95 {b['idle_p95_s'] * 1000:.0f} ms, busy p50 {b['busy_p50_s'] * 1000:.0f} / p95 "
              f"{b['busy_p95_s'] * 1000:.0f} ms = {b['ratio_p95']:.2f}x; trainings meanwhile "
              f"{b['training_samples_per_s_meanwhile']:.1f} samples/s")


if __name__ == "__main__":
    main()
