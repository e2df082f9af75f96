"""Command line and environment, parsed once into an EngineConfig."""

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch

Profile = Literal["tiny", "real"]
PROFILES = get_args(Profile)
FastMode = Literal["auto", "on", "off"]
FAST_MODES = get_args(FastMode)
SafetyMode = Literal["auto", "on", "off"]
SAFETY_MODES = get_args(SafetyMode)
TinySafetyFlag = Literal["all", "none"]
TINY_SAFETY_FLAGS = get_args(TinySafetyFlag)


@dataclass(frozen=True)
class EngineConfig:
    profile: Profile
    cache_dir: Path
    device: torch.device
    base_model: Path | None = None
    controlnet: Path | None = None
    # Generation through captured CUDA graphs (fast.py). auto: with CUDA; on: also elsewhere, eagerly (tests);
    # off: diffusers' pipelines only.
    fast: FastMode = "auto"

    @property
    def use_fast(self) -> bool:
        return self.fast == "on" or (self.fast == "auto" and self.device.type == "cuda")
    # The slot LoRA table (multilora.py): how many users' adapters the shared models hold at once, and their max rank.
    lora_slots: int = 16
    lora_max_rank: int = 32
    # "slots": jobs batched by the scheduler over the slot table; "peft": every job alone on diffusers' peft path.
    lora_path: Literal["slots", "peft"] = "slots"
    # Jobs the scheduler runs at once, and the fixed row count of its training UNet calls (0: natural sizes).
    max_jobs: int = 8
    train_rows: int = 8
    # Pad a training call with fewer rows only to the next power of two, not to train_rows (bench/bench_fast.py
    # measures what it saves a lone job and how far it moves a job's numbers).
    train_buckets: bool = False
    # The most of the engine's time trainings take while generations are active (scheduler.py).
    train_share: float = 1 / 3
    # The output check (safety.py): auto: on when the checker's folder is installed (real profile; the tiny profile
    # has none); on: required (the tiny profile builds a tiny one); off: not loaded.
    safety: SafetyMode = "auto"
    safety_checker: Path | None = None
    # Test knob of the tiny profile only: its checker flags every image ("all") or none ("none").
    tiny_safety_flag: TinySafetyFlag | None = None

    @property
    def dtype(self) -> torch.dtype:
        # Half precision only where it is fast; CPU kernels are float32.
        return torch.float16 if self.device.type == "cuda" else torch.float32


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_engine_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str] = os.environ) -> None:
    """The engine's flags, each falling back to its environment variable; other commands (the experiment runner)
    add them to their own parser so that a model is named the same way everywhere."""
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=env.get("ENGINE_PROFILE", "tiny"),
        help="tiny: SD1.5 architectures at tiny widths with random weights (images are noise); "
        "real: SD1.5 + ControlNet folders in diffusers layout [ENGINE_PROFILE, default tiny]",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(env.get("ENGINE_CACHE_DIR", Path.home() / ".cache" / "portrait-engine")),
        help="where the tiny profile's generated weights live [ENGINE_CACHE_DIR]",
    )
    parser.add_argument(
        "--device", default=env.get("ENGINE_DEVICE", _default_device()), help="torch device [ENGINE_DEVICE]"
    )
    parser.add_argument(
        "--base-model",
        type=Path,
        default=env.get("ENGINE_BASE_MODEL"),
        help="real profile: Stable Diffusion 1.5 folder in diffusers layout [ENGINE_BASE_MODEL]",
    )
    parser.add_argument(
        "--controlnet",
        type=Path,
        default=env.get("ENGINE_CONTROLNET"),
        help="real profile: ControlNet openpose folder in diffusers layout; without it pose requests "
        "are refused [ENGINE_CONTROLNET]",
    )
    parser.add_argument(
        "--fast",
        default=env.get("ENGINE_FAST", "auto"),
        help="auto|on|off: generate through CUDA graphs captured at start (auto: when the device is CUDA); "
        "tuned by ENGINE_FAST_BATCHES, ENGINE_FAST_COMPILE, ENGINE_FAST_AOT, ENGINE_FAST_COMPILE_CONTROLNET, "
        "ENGINE_FAST_COMPILE_VAE, ENGINE_FAST_CHANNELS_LAST, ENGINE_FAST_MERGE, "
        "ENGINE_FAST_SIZE, ENGINE_FAST_LORA_TARGETS [ENGINE_FAST]",
    )
    parser.add_argument(
        "--lora-path",
        choices=("slots", "peft"),
        default=env.get("ENGINE_LORA_PATH", "slots"),
        help="slots: jobs batched together over per-user LoRA slots; peft: one job at a time on diffusers' peft "
        "path [ENGINE_LORA_PATH, default slots]",
    )
    parser.add_argument(
        "--safety",
        default=env.get("SAFETY_CHECKER", "auto"),
        help="auto|on|off: check every generated image with diffusers' StableDiffusionSafetyChecker and withhold "
        "flagged ones (auto: when --safety-checker is installed) [SAFETY_CHECKER, default auto]",
    )
    parser.add_argument(
        "--safety-checker",
        type=Path,
        default=env.get("ENGINE_SAFETY_CHECKER"),
        help="real profile: the safety checker's folder (config.json, pytorch_model.bin, "
        "preprocessor_config.json), as the models command installs it [ENGINE_SAFETY_CHECKER]",
    )
    parser.add_argument(
        "--train-buckets",
        choices=("on", "off"),
        default=env.get("ENGINE_TRAIN_BUCKETS", "off"),
        help="on: a training UNet call with fewer than --train-rows rows is padded only to the next power of two "
        "[ENGINE_TRAIN_BUCKETS, default off]",
    )
    parser.add_argument(
        "--train-share",
        type=float,
        default=env.get("ENGINE_TRAIN_SHARE", str(1 / 3)),
        help="0..1: the most of the engine's time trainings take while portraits are being painted (1: one "
        "training step per denoising step) [ENGINE_TRAIN_SHARE, default 1/3]",
    )
    for flag, variable, default, what in (
        ("--max-jobs", "ENGINE_MAX_JOBS", 8, "jobs run at once (more wait in the queue)"),
        ("--lora-slots", "ENGINE_LORA_SLOTS", 16, "users' LoRAs held at once"),
        ("--lora-max-rank", "ENGINE_LORA_MAX_RANK", 32, "largest rank a slot holds (above: the peft path)"),
        ("--train-rows", "ENGINE_TRAIN_ROWS", 8, "rows per training UNet call, padded (0: natural sizes)"),
    ):
        parser.add_argument(flag, type=int, default=env.get(variable, str(default)), help=f"{what} [{variable}]")
    # No flag: a test knob read from the environment only.
    parser.set_defaults(tiny_safety_flag=env.get("ENGINE_TINY_SAFETY_FLAG") or None)


def engine_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> EngineConfig:
    """The EngineConfig from arguments parsed with add_engine_arguments; inconsistent ones end in parser.error."""
    if args.profile not in PROFILES:  # argparse does not check defaults, which come from the environment
        parser.error(f"ENGINE_PROFILE must be tiny or real, not {args.profile!r}")
    if args.profile == "real" and args.base_model is None:
        parser.error("--base-model (or ENGINE_BASE_MODEL) is required with --profile real")
    if args.fast not in FAST_MODES:
        parser.error(f"ENGINE_FAST must be auto, on or off, not {args.fast!r}")
    if args.lora_path not in ("slots", "peft"):
        parser.error(f"ENGINE_LORA_PATH must be slots or peft, not {args.lora_path!r}")
    if not 0 <= args.train_share <= 1:
        parser.error(f"ENGINE_TRAIN_SHARE must be between 0 and 1, not {args.train_share}")
    if args.train_buckets not in ("on", "off"):
        parser.error(f"ENGINE_TRAIN_BUCKETS must be on or off, not {args.train_buckets!r}")
    if args.safety not in SAFETY_MODES:
        parser.error(f"SAFETY_CHECKER must be auto, on or off, not {args.safety!r}")
    if args.tiny_safety_flag not in (None, *TINY_SAFETY_FLAGS):
        parser.error(f"ENGINE_TINY_SAFETY_FLAG must be all or none, not {args.tiny_safety_flag!r}")
    if args.tiny_safety_flag is not None and args.profile != "tiny":
        parser.error("ENGINE_TINY_SAFETY_FLAG is a test knob of the tiny profile only")
    if min(args.max_jobs, args.lora_slots, args.lora_max_rank) < 1 or args.train_rows < 0:
        parser.error("--max-jobs, --lora-slots and --lora-max-rank must be at least 1, --train-rows at least 0")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device: {error}")
    return EngineConfig(
        profile=args.profile,
        cache_dir=args.cache_dir,
        device=device,
        base_model=args.base_model,
        controlnet=args.controlnet,
        fast=args.fast,
        lora_path=args.lora_path,
        max_jobs=args.max_jobs,
        lora_slots=args.lora_slots,
        lora_max_rank=args.lora_max_rank,
        train_rows=args.train_rows,
        train_buckets=args.train_buckets == "on",
        train_share=args.train_share,
        safety=args.safety,
        safety_checker=args.safety_checker,
        tiny_safety_flag=args.tiny_safety_flag,
    )


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> EngineConfig:
    parser = argparse.ArgumentParser(
        prog="python -m portrait_engine",
        description="Portrait engine: JSON-lines requests on stdin, events on stdout, logs on stderr.",
    )
    add_engine_arguments(parser, env)
    return engine_config(parser, parser.parse_args(argv))
