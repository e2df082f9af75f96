"""python -m portrait_engine.experiments: the seed's study on any photo folder.

Trains a grid of mode x rank x learning rate through the Engine (one process, models loaded once), logs every step's
loss, samples fixed prompts x seeds from the live weights at every checkpoint, and writes a report folder:

    loss.png              every run's loss curve on one chart
    samples-<run>.png     per run: one row per checkpoint, one column per prompt x seed
    results.md / .json    final loss, seconds, peak memory, file size per run (the JSON adds per-step losses)
    losses.jsonl          {"run", "step", "loss"} per step, appended as training goes
    samples/<run>/step-<n>/p<i>-s<seed>.png, weights/<run>.safetensors

A cell that fails is recorded with its error and the grid goes on; Ctrl-C writes the report of what ran so far.
"""

import argparse
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import get_args

import torch
from diffusers import StableDiffusionPipeline, UniPCMultistepScheduler
from pydantic import ValidationError

from .__main__ import quiet_libraries
from .charts import loss_chart, sample_grid
from .config import EngineConfig, add_engine_arguments, engine_config
from .engine import Engine
from .errors import EngineError
from .protocol import TrainMode, TrainParams, TrainRequest
from .train import DEFAULT_LEARNING_RATE, Training

log = logging.getLogger("portrait_engine.experiments")

PHOTO_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
DEFAULT_PROMPTS = [
    "a photo of sks person",
    "a portrait of sks person, upper body, natural light, detailed face",
]
DEFAULT_CHECKPOINT_EVERY = {"lora": 200, "full": 1000}  # the seed's
# Set per cell by the grid: a --param may not set them too.
GRID_FIELDS = {"mode", "rank", "alpha", "learning_rate", "max_steps", "epochs", "resolution", "checkpoint_steps"}


@dataclass(frozen=True)
class Cell:
    mode: str
    rank: int | None  # None in full mode, which has no rank
    learning_rate: float

    @property
    def name(self) -> str:
        rank = f"-r{self.rank}" if self.rank is not None else ""
        return f"{self.mode}{rank}-lr{self.learning_rate:g}"


@dataclass
class Run:
    """One cell's outcome; filled in as it trains, so an interrupted cell still reports what it did."""

    name: str
    mode: str
    rank: int | None
    alpha: float | None
    learning_rate: float
    max_steps: int
    status: str = "not run"  # not run | running | ok | failed | interrupted
    error: str | None = None
    losses: list[float] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)
    seconds: float | None = None  # training alone: sampling time is subtracted
    sample_seconds: float = 0.0
    peak_memory_bytes: int | None = None
    file_size_bytes: int | None = None
    output: str | None = None
    samples: str | None = None

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


@dataclass(frozen=True)
class Options:
    photos: list[str]
    out: Path
    cells: list[Cell]
    steps: int
    checkpoint_every: dict[str, int]
    alpha: float | None
    prompts: list[str]
    seeds: list[int]
    sample_steps: int
    guidance_scale: float
    resolution: int
    params: dict
    discard_weights: bool


# --- measuring ----------------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory of one run. CUDA: torch.cuda.max_memory_allocated (tensors only, the base model included). CPU:
    the process's peak RSS; Linux lets /proc/self/clear_refs reset it per run (read back as VmHWM), elsewhere it is
    getrusage's ru_maxrss, the peak since the process started, so later runs report at least earlier ones'."""

    def __init__(self, device: torch.device):
        self.device = device
        self.per_run = device.type == "cuda" or _reset_peak_rss()
        if device.type == "cuda":
            self.description = "torch.cuda.max_memory_allocated per run (base model included)"
        elif self.per_run:
            self.description = "peak RSS of the process during the run (VmHWM, reset per run via /proc/self/clear_refs)"
        else:
            self.description = "peak RSS of the process since it started (getrusage ru_maxrss; not reset per run)"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.per_run:
            _reset_peak_rss()

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        if self.per_run:
            return _vm_hwm()
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")  # 5: reset the peak RSS to the current RSS (Linux 4.0+)
        return _vm_hwm() > 0
    except OSError:
        return False


def _vm_hwm() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# --- sampling from the live weights -------------------------------------------------------------------------------


def sample_live(training: Training, prompts: Sequence[str], seeds: Sequence[int], steps: int, size: int, guidance: float):
    """Images for every prompt x seed (prompt-major) from the weights being trained, without touching training.

    The pipeline is built with its constructor, not `from_pipe`: that one casts every module to a dtype, which would
    turn the float32 LoRA (or full UNet) being trained into float16 on CUDA. Sampling runs under the job's autocast
    (a float32 UNet beside a float16 text encoder), with CPU generators as the engine's generation uses, so a seed
    means the same image as in a `generate` request; training's own random streams are private and unaffected.
    """
    base = training.models.pipe
    components = {**base.components, "unet": training.unet}
    components["scheduler"] = UniPCMultistepScheduler.from_config(base.scheduler.config)  # the engine's default
    pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    modules = [m for m in (training.unet, training.text_encoder) if m is not None]
    device = training.device
    autocast = training.autocast_dtype
    images = []
    try:
        for module in modules:
            module.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            for prompt in prompts:
                images += pipe(
                    prompt=prompt,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    width=size,
                    height=size,
                    num_images_per_prompt=len(seeds),
                    generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
                    output_type="pil",
                ).images
    finally:
        for module in modules:
            module.train()
    return images


# --- the grid -----------------------------------------------------------------------------------------------------


class _Job:
    """The JobContext of a cell: never cancelled (Ctrl-C interrupts the step itself); logs about ten lines a run."""

    def __init__(self, name: str):
        self.name = name

    def check_cancel(self) -> None:
        pass

    def progress(self, step: int, total: int, loss: float | None = None) -> None:
        if step == total or step % max(1, total // 10) == 0:
            log.info("%s: step %d/%d, loss %.4f", self.name, step, total, loss)


def plan(options: Options) -> list[Run]:
    runs = []
    for cell in options.cells:
        alpha = None if cell.rank is None else (options.alpha if options.alpha is not None else float(cell.rank))
        runs.append(Run(cell.name, cell.mode, cell.rank, alpha, cell.learning_rate, options.steps))
    return runs


def run_cell(engine: Engine, run: Run, options: Options, memory: PeakMemory, loss_log) -> None:
    """Trains one cell, sampling at its checkpoints; records failure in `run` instead of raising (Ctrl-C excepted,
    after recording it)."""
    out = options.out
    output = out / "weights" / f"{run.name}.safetensors"
    every = options.checkpoint_every[run.mode]
    checkpoint_images = []  # (step, images)
    run.status = "running"

    def observer(training: Training) -> None:
        step = training.step_count
        run.losses.append(training.losses[-1])
        loss_log.write(json.dumps({"run": run.name, "step": step, "loss": run.losses[-1]}) + "\n")
        loss_log.flush()
        if step % every and step != training.params.max_steps:
            return
        started = time.monotonic()
        images = sample_live(
            training, options.prompts, options.seeds, options.sample_steps, options.resolution, options.guidance_scale
        )
        folder = out / "samples" / run.name / f"step-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        for image, (p, seed) in zip(images, _columns(options)):
            image.save(folder / f"p{p}-s{seed}.png")
        checkpoint_images.append((step, images))
        run.checkpoints.append(step)
        run.sample_seconds += time.monotonic() - started

    memory.reset()
    started = time.monotonic()
    try:
        rank = {} if run.rank is None else {"rank": run.rank, "alpha": run.alpha}
        params = TrainParams(
            mode=run.mode,
            learning_rate=run.learning_rate,
            max_steps=run.max_steps,
            resolution=options.resolution,
            **rank,
            **options.params,
        )
        request = TrainRequest(id=run.name, op="train", photos=options.photos, output=str(output), params=params)
        result = engine.train(request, _Job(run.name), observer=observer)
        run.losses = list(result.losses)  # the engine's own record (equal to the observed one)
        run.file_size_bytes = output.stat().st_size
        run.output = str(output)
        if options.discard_weights:
            for path in (output, Path(result.kohya_output or output)):
                path.unlink(missing_ok=True)
        run.status = "ok"
    except KeyboardInterrupt:
        run.status, run.error = "interrupted", "interrupted (Ctrl-C)"
        raise
    except Exception as error:  # noqa: BLE001 (any failure is the cell's result; the grid goes on)
        run.status, run.error = "failed", _describe(error)
        # The engine's own refusals are explained by their message; anything else needs its traceback.
        expected = isinstance(error, (EngineError, ValidationError))
        log.error("%s failed: %s", run.name, run.error, exc_info=not expected)
    finally:
        run.seconds = time.monotonic() - started - run.sample_seconds
        run.peak_memory_bytes = memory.peak()
        if checkpoint_images:
            write_sample_grid(run, checkpoint_images, options)


def _describe(error: Exception) -> str:
    if isinstance(error, ValidationError):  # a grid value the engine refuses: say which and why, on one line
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return f"invalid parameters: {problems}"
    return f"{type(error).__name__}: {' '.join(str(getattr(error, 'message', error)).split())}"


def _columns(options: Options) -> list[tuple[int, int]]:
    """(prompt number from 1, seed) per sample column, in the order sample_live returns images."""
    return [(p, seed) for p in range(1, len(options.prompts) + 1) for seed in options.seeds]


def write_sample_grid(run: Run, checkpoint_images, options: Options) -> None:
    labels = [f"p{p} seed {seed}" for p, seed in _columns(options)]
    legend = [f"p{p}: {prompt}" for p, prompt in enumerate(options.prompts, start=1)]
    rows = [(f"step {step}", images) for step, images in checkpoint_images]
    path = options.out / f"samples-{run.name}.png"
    sample_grid(run.name, rows, labels, legend, options.resolution).save(path)
    run.samples = path.name


def run_grid(engine: Engine, options: Options) -> list[Run]:
    """Runs every cell in order, rewriting the report after each; Ctrl-C stops the grid, writes the report of what
    ran and raises KeyboardInterrupt again."""
    options.out.mkdir(parents=True, exist_ok=True)
    memory = PeakMemory(engine.config.device)
    runs = plan(options)
    with open(options.out / "losses.jsonl", "w") as loss_log:
        try:
            for run in runs:
                log.info("run %s", run.name)
                run_cell(engine, run, options, memory, loss_log)
                write_report(runs, options, engine.config, memory)
        finally:
            write_report(runs, options, engine.config, memory)
    return runs


# --- the report ---------------------------------------------------------------------------------------------------


def write_report(runs: list[Run], options: Options, config: EngineConfig, memory: PeakMemory) -> None:
    out = options.out
    loss_chart({run.name: run.losses for run in runs if run.status != "not run"}).save(out / "loss.png")
    settings = {
        "profile": config.profile,
        "device": str(config.device),
        "base_model": None if config.base_model is None else str(config.base_model),
        "photos": options.photos,
        "resolution": options.resolution,
        "steps": options.steps,
        "checkpoint_every": options.checkpoint_every,
        "prompts": options.prompts,
        "seeds": options.seeds,
        "sample_steps": options.sample_steps,
        "guidance_scale": options.guidance_scale,
        "scheduler": "unipc",
        "params": options.params,
        "peak_memory": memory.description,
    }
    data = {"settings": settings, "runs": [asdict(run) | {"final_loss": run.final_loss} for run in runs]}
    _write_atomically(out / "results.json", json.dumps(data, indent=2) + "\n")
    _write_atomically(out / "results.md", _markdown(runs, settings))


def _markdown(runs: list[Run], settings: dict) -> str:
    lines = [
        "# Training experiments",
        "",
        f"{settings['profile']} profile on {settings['device']}, {len(settings['photos'])} photos at "
        f"{settings['resolution']} px, {settings['steps']} steps per run. Samples: {settings['sample_steps']} UniPC "
        f"steps, guidance {settings['guidance_scale']}, seeds {', '.join(map(str, settings['seeds']))}, prompts:",
        "",
        *[f"{i}. {prompt}" for i, prompt in enumerate(settings["prompts"], start=1)],
        "",
        f"Seconds: training only (sampling excluded). Peak memory: {settings['peak_memory']}.",
        "",
        "![loss](loss.png)",
        "",
        "| run | mode | rank | lr | steps | final loss | seconds | peak memory | file size | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        status = run.status if run.error is None else f"{run.status}: {run.error}"
        cells = [
            run.name,
            run.mode,
            "—" if run.rank is None else str(run.rank),
            f"{run.learning_rate:g}",
            str(len(run.losses)),
            "—" if run.final_loss is None else f"{run.final_loss:.4f}",
            "—" if run.seconds is None else f"{run.seconds:.1f}",
            _bytes(run.peak_memory_bytes),
            _bytes(run.file_size_bytes),
            status.replace("|", "\\|"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    grids = [run for run in runs if run.samples]
    if grids:
        lines += ["", "## Samples", ""]
        lines += [f"### {run.name}\n\n![{run.name}]({run.samples})\n" for run in grids]
    return "\n".join(lines) + "\n"


def _bytes(count: int | None) -> str:
    if count is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024


def _write_atomically(path: Path, text: str) -> None:
    # A report rewritten after every cell (and on Ctrl-C) is never seen half-written.
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


# --- command line -------------------------------------------------------------------------------------------------


def _list(kind):
    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{text!r}: {error}") from error

    return parse


def _param(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value  # a bare string, e.g. mixed_precision=bf16


def parse_args(argv: Sequence[str] | None = None, env=os.environ) -> tuple[EngineConfig, Options]:
    parser = argparse.ArgumentParser(
        prog="python -m portrait_engine.experiments",
        description="Train a grid of LoRA / full runs on a photo folder and write a report (loss chart, sample grids, "
        "results table). Logs go to stderr.",
    )
    add_engine_arguments(parser, env)
    parser.add_argument("--photos", type=Path, required=True, help="folder of training photos")
    parser.add_argument("--out", type=Path, required=True, help="report folder (created; files in it are replaced)")
    modes = get_args(TrainMode)
    parser.add_argument("--modes", type=_list(str), default=["lora"], help=f"comma list of {', '.join(modes)}")
    parser.add_argument("--ranks", type=_list(int), default=[4, 8], help="comma list of LoRA ranks (default 4,8)")
    parser.add_argument(
        "--learning-rates",
        type=_list(float),
        help="comma list; default the engine's per mode (lora 1e-4, full 5e-6)",
    )
    parser.add_argument("--alpha", type=float, help="LoRA alpha (default: the rank, as train_dreambooth_lora.py)")
    parser.add_argument("--steps", type=int, default=TrainParams().max_steps, help="optimizer steps per run")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        help="sample every N steps (and at the last); default the seed's, lora 200, full 1000",
    )
    parser.add_argument("--prompts", nargs="+", default=DEFAULT_PROMPTS, help="fixed sample prompts")
    parser.add_argument("--seeds", type=_list(int), default=[0, 1], help="comma list of fixed sample seeds")
    parser.add_argument("--sample-steps", type=int, default=20, help="denoising steps per sample (default 20)")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument(
        "--resolution", type=int, default=512, help="training and sample size (below 512 only on the tiny profile)"
    )
    parser.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other TrainParams field for every run, VALUE as JSON or a bare string (e.g. grad_accum=1, seed=3, "
        "mixed_precision=bf16, snr_gamma=5)",
    )
    parser.add_argument("--discard-weights", action="store_true", help="delete each run's weights once measured")
    args = parser.parse_args(argv)
    config = engine_config(parser, args)

    if unknown := [mode for mode in args.modes if mode not in modes]:
        parser.error(f"--modes: unknown {', '.join(unknown)}")
    params = dict(args.param)
    if clash := sorted(GRID_FIELDS & params.keys()):
        parser.error(f"--param {', '.join(clash)}: set by the grid, use its own flag")
    if not args.photos.is_dir():
        parser.error(f"--photos: {args.photos} is not a folder")
    photos = sorted(str(p.resolve()) for p in args.photos.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        parser.error(f"--photos: no {'/'.join(sorted(PHOTO_SUFFIXES))} files in {args.photos}")
    for name in ("steps", "sample_steps", "checkpoint_every"):
        if (value := getattr(args, name)) is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.seeds or not args.prompts:
        parser.error("give at least one prompt and one seed")

    cells = []
    for mode in dict.fromkeys(args.modes):
        for rank in dict.fromkeys(args.ranks) if mode == "lora" else [None]:
            # Invalid values are not checked here: each cell validates its own, and one that fails is recorded.
            for lr in dict.fromkeys(args.learning_rates or [DEFAULT_LEARNING_RATE[mode]]):
                cells.append(Cell(mode, rank, lr))
    every = {mode: args.checkpoint_every or DEFAULT_CHECKPOINT_EVERY[mode] for mode in modes}
    options = Options(
        photos=photos,
        out=args.out.resolve(),
        cells=cells,
        steps=args.steps,
        checkpoint_every=every,
        alpha=args.alpha,
        prompts=list(args.prompts),
        seeds=args.seeds,
        sample_steps=args.sample_steps,
        guidance_scale=args.guidance_scale,
        resolution=args.resolution,
        params=params,
        discard_weights=args.discard_weights,
    )
    return config, options


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 when every run succeeded, 1 when one failed, 130 on Ctrl-C (the report is written either way)."""
    config, options = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    engine = Engine(config)
    try:
        runs = run_grid(engine, options)
    except KeyboardInterrupt:
        log.warning("interrupted: partial report in %s", options.out)
        return 130
    failed = [run.name for run in runs if run.status != "ok"]
    log.info("report in %s%s", options.out, f" ({len(failed)} failed: {', '.join(failed)})" if failed else "")
    print(options.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
