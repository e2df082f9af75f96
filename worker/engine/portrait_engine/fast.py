"""The fast generation path: the CFG denoising step (UNet, or ControlNet + UNet) captured in CUDA graphs over static
buffers at fixed batch sizes, optionally after torch.compile, with users' LoRAs in preallocated slot buffers.

What it computes is StableDiffusionPipeline's / StableDiffusionControlNetPipeline's loop: the same prompt encoding,
initial latents (same generators), scheduler (diffusers' own, stepped eagerly outside the graph on the real rows),
CFG in one batch of 2B and the same VAE decode and post-processing. Only the UNet step is replayed from a graph, and
LoRA is added by forward hooks that gather each sample's A/B from the slot buffers (so one batch can hold several
users, and switching a user is a copy into a slot: the graphs stay valid, nothing recompiles).

Requests the graphs cannot serve (another resolution, guidance ≤ 1, a text-encoder LoRA, a LoRA above the slots'
rank or on other layers) go to the plain diffusers path; `FastGenerator.refusal` says why.
"""

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_unet_state_dict_to_peft
from PIL import Image
from safetensors import safe_open

from .errors import EngineError
from .models import Models
from .protocol import GenerateRequest

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 2, 4, 8)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # TrainParams' default target_modules
PACKED_CACHE = 32  # users' packed LoRAs kept on the GPU
PROMPT_CACHE = 64  # prompt embeddings kept on the GPU


def bucket(count: int, sizes: Sequence[int] = BATCH_SIZES) -> int | None:
    """The smallest captured batch size that holds `count` samples (None: more than the largest)."""
    return next((size for size in sorted(sizes) if size >= count), None)


@dataclass(frozen=True)
class FastSettings:
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    compile_batches: tuple[int, ...] = (1,)  # torch.compile (mode default) costs ~100 s per shape on first start
    compile_controlnet: bool = False
    max_rank: int = 32
    slots: int = 8  # distinct users in one batch, plus slot 0 which is always the bare model
    width: int = 512
    height: int = 512
    targets: tuple[str, ...] = LORA_TARGETS


class LoraSlots:
    """LoRA on the UNet's Linear layers from preallocated slot buffers, selected per sample.

    All slots live in one (slots, P) buffer: per layer an A block (R × in) and a B block (out × R) are views into it,
    A blocks first, B blocks after. A user's LoRA, zero-padded to rank R with its scale folded into B, is packed once
    into a P-vector on the device; switching a user into a slot is then two copies. Slot 0 stays zero (no LoRA).
    Forward hooks add `B[s] @ A[s] @ x` per sample (index buffers by batch size) while `enabled` is set; hooks on the
    bare Linear modules survive peft wrapping them for training or the plain path, which run with `enabled` off.
    """

    def __init__(self, unet: nn.Module, targets: Sequence[str], slots: int, rank: int, device, dtype):
        self.rank, self.device, self.dtype = rank, device, dtype
        self.sites: dict[str, nn.Linear] = {
            name: module
            for name, module in unet.named_modules()
            if isinstance(module, nn.Linear) and any(name.endswith("." + t) for t in targets)
        }
        if not self.sites:
            raise EngineError("internal", f"the UNet has no Linear layers named {list(targets)}")
        a_size = sum(rank * m.in_features for m in self.sites.values())
        b_size = sum(m.out_features * rank for m in self.sites.values())
        self.a_size, self.size = a_size, a_size + b_size
        self.flat = torch.zeros(slots + 1, self.size, device=device, dtype=dtype)
        self._views: dict[str, tuple[slice, slice]] = {}
        a_at, b_at = 0, a_size
        for name, m in self.sites.items():
            a, b = slice(a_at, a_at + rank * m.in_features), slice(b_at, b_at + m.out_features * rank)
            self._views[name] = (a, b)
            a_at, b_at = a.stop, b.stop
        self.enabled = False
        self.index: torch.Tensor | None = None  # (N,) slot per sample of the batch being run
        self._packed: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._hooks = [m.register_forward_hook(self._hook(name, m)) for name, m in self.sites.items()]

    def _hook(self, name: str, module: nn.Linear):
        a_cols, b_cols = self._views[name]
        rank, fan_in, fan_out = self.rank, module.in_features, module.out_features
        a = self.flat[:, a_cols].unflatten(1, (rank, fan_in))  # (S, R, in)
        b = self.flat[:, b_cols].unflatten(1, (fan_out, rank))  # (S, out, R)

        def hook(_module, args, output):
            if not self.enabled:
                return None
            x = args[0]
            n = x.shape[0]
            down = torch.bmm(x.reshape(n, -1, fan_in), a.index_select(0, self.index).transpose(1, 2))
            return output + torch.bmm(down, b.index_select(0, self.index).transpose(1, 2)).view_as(output)

        return hook

    def remove(self) -> None:
        for handle in self._hooks:
            handle.remove()

    def pack(self, path: str) -> tuple[torch.Tensor, float]:
        """The LoRA file at `path` as one P-vector (unscaled) and its alpha/r; cached by path and mtime."""
        try:
            stat = os.stat(path)
        except FileNotFoundError as error:
            raise EngineError("not_found", f"LoRA {path} does not exist") from error
        key = (path, stat.st_mtime_ns, stat.st_size)
        if key in self._packed:
            self._packed.move_to_end(key)
            return self._packed[key]
        packed = self._read(path)
        self._packed[key] = packed
        while len(self._packed) > PACKED_CACHE:
            self._packed.popitem(last=False)
        return packed

    def _read(self, path: str) -> tuple[torch.Tensor, float]:
        state, metadata = _read_lora(path)
        unet = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
        if len(unet) != len(state):
            raise Unsupported("the LoRA trains the text encoder")
        unet = convert_unet_state_dict_to_peft(unet)
        rank = int(metadata.get("r") or next(v.shape[0] for k, v in unet.items() if k.endswith("lora_A.weight")))
        alpha = float(metadata.get("lora_alpha") or rank)
        if rank > self.rank:
            raise Unsupported(f"LoRA rank {rank} is above the slots' {self.rank}")
        packed = torch.zeros(self.size, device=self.device, dtype=self.dtype)
        seen = set()
        for key, tensor in unet.items():
            name, _, part = key.rpartition(".lora_")
            if name not in self.sites:
                raise Unsupported(f"the LoRA adapts {name}, which the slots do not hold")
            module, (a_cols, b_cols) = self.sites[name], self._views[name]
            if part == "A.weight":
                packed[a_cols].view(self.rank, module.in_features)[:rank].copy_(tensor)
            elif part == "B.weight":
                packed[b_cols].view(module.out_features, self.rank)[:, :rank].copy_(tensor)
            else:
                raise Unsupported(f"unexpected LoRA tensor {key}")
            seen.add(name)
        log.info("packed LoRA %s: %d layers, rank %d, alpha %g", path, len(seen), rank, alpha)
        return packed, alpha / rank

    def load(self, slot: int, path: str, scale: float) -> None:
        """Puts the LoRA at `path` into `slot` (1..slots) at `scale`: two device copies once it is packed."""
        packed, scaling = self.pack(path)
        self.put(slot, packed, scaling * scale)

    def put(self, slot: int, packed: torch.Tensor, scale: float) -> None:
        if not 1 <= slot < len(self.flat):
            raise ValueError(f"slot {slot} out of range")
        self.flat[slot, : self.a_size].copy_(packed[: self.a_size])
        torch.mul(packed[self.a_size :], scale, out=self.flat[slot, self.a_size :])

    def clear(self, slot: int) -> None:
        self.flat[slot].zero_()


class Unsupported(Exception):
    """The fast path cannot serve this request; the plain path will."""


def _read_lora(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(path, "pt") as file:
        metadata = file.metadata() or {}
        state = {key: file.get_tensor(key) for key in file.keys()}
    # diffusers writes the adapter's shape flattened: {"unet.r": 4, "unet.lora_alpha": 8.0, ...}.
    flat = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    shape = {key.removeprefix("unet."): value for key, value in flat.items() if key.startswith("unet.")}
    if any(key.startswith(("lora_unet_", "lora_te")) for key in state):
        raise Unsupported("kohya-format LoRA")
    return state, shape


@dataclass
class StepGraph:
    """One CFG denoising step at batch B over static buffers: `run()` replays it (or calls it eagerly on the CPU).

    Inputs (first n rows used, the rest stay as they were): `sample` (B,4,h,w) the scaled model input, `t` (B,),
    `embeds` (2B,77,768) as [negative rows | positive rows], `guidance` (B,1,1,1), `index` (2B,) LoRA slots, and
    for ControlNet `cond` (2B,3,H,W) and `cond_scale` (2B,1,1,1). Output: `noise` (B,4,h,w), the guided prediction.
    """

    batch: int
    body: Callable[[], torch.Tensor]
    buffers: dict[str, torch.Tensor]
    graph: torch.cuda.CUDAGraph | None = None
    noise: torch.Tensor | None = None
    compiled: bool = False
    seconds: float = 0.0

    def run(self) -> torch.Tensor:
        if self.graph is None:
            self.noise = self.body()
        else:
            self.graph.replay()
        return self.noise


class FastGenerator:
    """txt2img and ControlNet generation through captured CUDA graphs; built once at engine start (`warm_up`)."""

    def __init__(self, models: Models, settings: FastSettings = FastSettings()):
        self.models, self.settings = models, settings
        self.pipe: StableDiffusionPipeline = models.pipe
        unet = self.pipe.unet
        self.device, self.dtype = models.device, models.dtype
        self.slots = LoraSlots(unet, settings.targets, settings.slots, settings.max_rank, self.device, self.dtype)
        self.latent_hw = (settings.height // self.pipe.vae_scale_factor, settings.width // self.pipe.vae_scale_factor)
        self.graphs: dict[tuple[bool, int], StepGraph] = {}
        # Without CUDA (tests) the same buffers and step body run eagerly.
        self.use_graphs = self.device.type == "cuda"
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._compiled: dict[str, Callable] = {}
        self._prompts: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.info: dict = {}

    # --- warm-up ------------------------------------------------------------------------------------------------

    def warm_up(self) -> dict:
        """Compiles (where configured) and captures every graph; returns what the ready event reports."""
        started = time.monotonic()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        kinds = [False] + ([True] if self.models.controlnet is not None else [])
        for controlnet in kinds:
            for batch in self.settings.batch_sizes:
                try:
                    self.graphs[(controlnet, batch)] = self._build(controlnet, batch)
                except Exception:
                    if batch not in self.settings.compile_batches or self.device.type != "cuda":
                        raise
                    # A compiler failure costs speed, not service: capture the eager modules instead.
                    log.exception("torch.compile failed for batch %d; capturing it uncompiled", batch)
                    self._compiled = {k: v for k, v in self._compiled.items() if not k.endswith(f"@{batch}")}
                    self.settings = replace(self.settings, compile_batches=tuple(
                        b for b in self.settings.compile_batches if b != batch))
                    self.graphs[(controlnet, batch)] = self._build(controlnet, batch)
        self.info = {
            "fast": True,
            "warmup_s": round(time.monotonic() - started, 2),
            "batch_sizes": list(self.settings.batch_sizes),
            "compiled": sorted({f"{'controlnet' if c else 'unet'}@{b}" for (c, b), g in self.graphs.items() if g.compiled}),
            "graphs": len(self.graphs),
            "lora_slots": self.settings.slots,
            "lora_max_rank": self.settings.max_rank,
            "size": [self.settings.width, self.settings.height],
        }
        if self.device.type == "cuda":
            self.info["peak_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
            self.info["reserved_gib"] = round(torch.cuda.memory_reserved(self.device) / 2**30, 2)
        log.info("fast path warm: %s", self.info)
        return self.info

    def _modules(self, controlnet: bool, batch: int) -> tuple[Callable, Callable | None]:
        unet, cn = self.pipe.unet, self.models.controlnet if controlnet else None
        if batch in self.settings.compile_batches and self.device.type == "cuda" and (
            cn is None or self.settings.compile_controlnet
        ):
            # One compiled function per (graph kind, batch), dynamic=False: no shape or signature (the ControlNet's
            # residuals are extra UNet inputs) ever recompiles another's. Each costs ~100 s on a first start.
            kind = "cn" if cn is not None else "txt"
            unet = self._compiled.setdefault(f"unet-{kind}@{batch}", torch.compile(unet, mode="default", dynamic=False))
            if cn is not None:
                cn = self._compiled.setdefault(f"cn@{batch}", torch.compile(cn, mode="default", dynamic=False))
        return unet, cn

    def _build(self, controlnet: bool, batch: int) -> StepGraph:
        started = time.monotonic()
        h, w = self.latent_hw
        dev, dt = self.device, self.dtype
        text = self.pipe.text_encoder.config
        unet_in = self.pipe.unet.config.in_channels
        buffers = {
            "sample": torch.zeros(batch, unet_in, h, w, device=dev, dtype=dt),
            "t": torch.full((batch,), 999.0, device=dev),
            "embeds": torch.zeros(2 * batch, text.max_position_embeddings, self.pipe.unet.config.cross_attention_dim,
                                  device=dev, dtype=dt),
            "guidance": torch.full((batch, 1, 1, 1), 7.5, device=dev),
            "index": torch.zeros(2 * batch, device=dev, dtype=torch.long),
        }
        if controlnet:
            buffers["cond"] = torch.zeros(2 * batch, 3, self.settings.height, self.settings.width, device=dev, dtype=dt)
            buffers["cond_scale"] = torch.ones(2 * batch, 1, 1, 1, device=dev, dtype=dt)
        unet, cn = self._modules(controlnet, batch)
        b = buffers

        def body() -> torch.Tensor:
            x = torch.cat([b["sample"], b["sample"]])
            t = torch.cat([b["t"], b["t"]])
            extra = {}
            if cn is not None:
                down, mid = cn(x, t, encoder_hidden_states=b["embeds"], controlnet_cond=b["cond"],
                               conditioning_scale=b["cond_scale"], guess_mode=False, return_dict=False)
                extra = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
            pred = unet(x, t, encoder_hidden_states=b["embeds"], return_dict=False, **extra)[0]
            uncond, cond = pred.chunk(2)
            # The pipeline's own CFG formula, with a per-sample scale (the pipeline's is one float per call).
            return uncond + b["guidance"].to(pred.dtype) * (cond - uncond)

        step = StepGraph(batch=batch, body=body, buffers=buffers, compiled=unet is not self.pipe.unet)
        self.slots.index = buffers["index"]
        self.slots.enabled = True
        try:
            with torch.no_grad():
                if self.use_graphs:
                    stream = torch.cuda.Stream(dev)
                    stream.wait_stream(torch.cuda.current_stream(dev))
                    with torch.cuda.stream(stream):
                        for _ in range(3):  # compiles, autotunes cuDNN and allocator before capture
                            body()
                    torch.cuda.current_stream(dev).wait_stream(stream)
                    step.graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(step.graph, pool=self._pool):
                        step.noise = body()
                    torch.cuda.synchronize(dev)
        finally:
            self.slots.enabled = False
        step.seconds = time.monotonic() - started
        log.info("captured %s batch %d in %.1f s", "controlnet+unet" if controlnet else "unet", batch, step.seconds)
        return step

    # --- requests -------------------------------------------------------------------------------------------------

    def refusal(self, request: GenerateRequest, controlnet: bool) -> str | None:
        """Why this request must take the plain path, or None when the graphs serve it."""
        if (request.width, request.height) != (self.settings.width, self.settings.height):
            return f"size {request.width}x{request.height} is not captured"
        if request.guidance_scale <= 1:
            return "guidance_scale <= 1 runs without CFG"
        if bucket(request.num_images, self.settings.batch_sizes) is None:
            return f"{request.num_images} images exceed the largest captured batch"
        if controlnet and self.models.controlnet is None:
            return "no ControlNet loaded"
        if request.lora is not None:
            try:
                self.slots.pack(request.lora)
            except Unsupported as reason:
                return str(reason)
        return None

    @torch.no_grad()
    def generate(
        self,
        request: GenerateRequest,
        seed: int,
        control_image: Image.Image | None,
        on_step: Callable[[int, int], None],
        pipe,
    ) -> list[Image.Image]:
        """One request through the graphs; `pipe` is the per-request pipeline (its scheduler and helpers)."""
        return self.generate_many([(request, seed)], control_image, on_step, pipe)[0]

    @torch.no_grad()
    def generate_many(
        self,
        items: Sequence[tuple[GenerateRequest, int]],
        control_image: Image.Image | None,
        on_step: Callable[[int, int], None],
        pipe,
    ) -> list[list[Image.Image]]:
        """Several requests (each with its seed) in one batch, each with its own prompt, LoRA (its own slot),
        guidance and seed; they share steps, scheduler, size and the control image. Returns each one's images."""
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

        first = items[0][0]
        if any((r.steps, r.scheduler, r.width, r.height) != (first.steps, first.scheduler, first.width, first.height)
               for r, _ in items):
            raise ValueError("requests in one batch must share steps, scheduler and size")
        counts = [r.num_images for r, _ in items]
        n = sum(counts)
        controlnet = control_image is not None
        big = bucket(n, self.settings.batch_sizes)
        if big is None:
            raise ValueError(f"{n} images exceed the largest captured batch")
        step = self.graphs[(controlnet, big)]
        b = step.buffers
        # image j of a request is image 0 of seed + j (generate.py's convention)
        generator = [torch.Generator("cpu").manual_seed(seed + j) for (r, seed) in items for j in range(r.num_images)]
        slots = self._assign_slots(items)
        row = 0
        for (r, _), count, slot in zip(items, counts, slots):
            positive, negative = self._embeddings(pipe, r.prompt, count), self._embeddings(pipe, r.negative_prompt, count)
            b["embeds"][row : row + count].copy_(negative)
            b["embeds"][big + row : big + row + count].copy_(positive)
            b["guidance"][row : row + count].fill_(r.guidance_scale)
            b["index"][row : row + count].fill_(slot)
            b["index"][big + row : big + row + count].fill_(slot)
            if controlnet:
                b["cond_scale"][row : row + count].fill_(r.controlnet_scale)
                b["cond_scale"][big + row : big + row + count].fill_(r.controlnet_scale)
            row += count
        timesteps, _ = retrieve_timesteps(pipe.scheduler, first.steps, self.device)
        latents = pipe.prepare_latents(n, pipe.unet.config.in_channels, first.height, first.width,
                                       self.dtype, self.device, generator, None)
        extra_step = pipe.prepare_extra_step_kwargs(generator, 0.0)
        if controlnet:
            image = pipe.prepare_image(image=control_image, width=first.width, height=first.height,
                                       batch_size=n, num_images_per_prompt=1, device=self.device,
                                       dtype=self.models.controlnet.dtype, do_classifier_free_guidance=True,
                                       guess_mode=False)
            b["cond"][:n].copy_(image[:n])
            b["cond"][big : big + n].copy_(image[n:])
        scheduler = pipe.scheduler
        if not self.use_graphs:
            self.slots.index, self.slots.enabled = b["index"], True
        try:
            for i, t in enumerate(timesteps):
                b["sample"][:n].copy_(scheduler.scale_model_input(latents, t))
                b["t"].copy_(t.expand(big))  # device to device: no sync
                noise = step.run()[:n]
                latents = scheduler.step(noise, t, latents, **extra_step, return_dict=False)[0]
                on_step(i + 1, len(timesteps))
        finally:
            self.slots.enabled = False
        images = decode(pipe, latents, generator)
        out, row = [], 0
        for count in counts:
            out.append(images[row : row + count])
            row += count
        return out

    def _embeddings(self, pipe, prompt: str, count: int) -> torch.Tensor:
        """The text encoder's output for `prompt`, `count` times; recent prompts (the empty negative above all) are
        kept, since the base text encoder never changes (text-encoder LoRAs take the plain path)."""
        embedding = self._prompts.get(prompt)
        if embedding is None:
            embedding = pipe.encode_prompt(prompt, self.device, 1, False)[0]
            self._prompts[prompt] = embedding
            while len(self._prompts) > PROMPT_CACHE:
                self._prompts.popitem(last=False)
        self._prompts.move_to_end(prompt)
        return embedding.expand(count, -1, -1)

    def _assign_slots(self, items: Sequence[tuple[GenerateRequest, int]]) -> list[int]:
        """Slot per request: 0 for none; requests with the same LoRA and scale share one. A switch is a copy."""
        assigned: dict[tuple[str, float], int] = {}
        slots = []
        for r, _ in items:
            if r.lora is None:
                slots.append(0)
                continue
            key = (r.lora, r.lora_scale)
            if key not in assigned:
                if len(assigned) >= self.settings.slots:
                    raise ValueError(f"more than {self.settings.slots} LoRAs in one batch")
                assigned[key] = len(assigned) + 1
                self.slots.load(assigned[key], r.lora, r.lora_scale)
            slots.append(assigned[key])
        return slots


def decode(pipe, latents: torch.Tensor, generator) -> list[Image.Image]:
    """The pipeline's own decode and post-processing (no safety checker: every image denormalized)."""
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
    return pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True] * len(image))


def settings_from_env(env=os.environ) -> FastSettings:
    """ENGINE_FAST_* variables (see config.py) into FastSettings."""

    def sizes(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
        raw = env.get(name)
        if raw is None:
            return default
        raw = raw.strip().lower()
        if raw in ("", "none", "off"):
            return ()
        return tuple(sorted({int(part) for part in raw.split(",")}))

    batch_sizes = sizes("ENGINE_FAST_BATCHES", BATCH_SIZES)
    width, _, height = env.get("ENGINE_FAST_SIZE", "512x512").lower().partition("x")
    return FastSettings(
        width=int(width),
        height=int(height or width),
        batch_sizes=batch_sizes,
        compile_batches=sizes("ENGINE_FAST_COMPILE", (1,)),
        compile_controlnet=env.get("ENGINE_FAST_COMPILE_CONTROLNET", "0") in ("1", "true", "on"),
        max_rank=int(env.get("ENGINE_FAST_MAX_RANK", 32)),
    )


def inductor_cache(cache_dir: Path) -> None:
    """Keeps inductor's compiled kernels on disk (under the engine's cache folder) so a restart is quick."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
