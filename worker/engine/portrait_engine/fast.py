"""The fast generation path: the UNet call of a denoising step (UNet, or ControlNet + UNet) captured in CUDA graphs
over static buffers at fixed row counts, optionally after torch.compile, with users' LoRAs in the shared slot layers
(multilora.py) read through their preallocated index buffer.

`FastGenerator.predict` is a drop-in for multigen's batched UNet call: the scheduler's requests (several users, CFG's
rows, per-row timesteps, slots and ControlNet scales) are copied into the buffers of the smallest captured row count
that holds them, the graph is replayed and the rows come back. Everything around it (prompt encoding, latents, each
request's scheduler step, guidance, VAE decode) stays multigen's, so what it computes is what diffusers' pipelines
compute (tests/test_fast.py, test_multigen.py). A batch no graph holds (another latent size, more rows) runs eagerly.
"""

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from torch import nn

from . import aot
from .models import Models
from .multigen import DECODE_BATCH
from .multilora import NONE, SlotMerge

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 2, 4, 8)
# The VAE decoder's packages: one image, and the most images a shared decode takes (requests ending on one step).
VAE_BATCHES = (1, DECODE_BATCH)
# The UNet layers whose LoRA updates the graphs compute: the kinds the engine trains by default (protocol.py). A batch
# whose LoRAs fill other layers too runs eagerly; computing all eight kinds in every graph doubled a UNet call.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


# torch's GroupNorm kernel reduces each (sample, group) in one thread block: at the VAE decoder's 256 and 512 px
# layers and batch 1 that is 32 blocks for up to 1 M values each, most of the card idle (0.98 ms for 128 channels at
# 512 px on the H200; 0.46 ms in chunks, bench/probe_decode.py). Below these sizes torch's kernel is the faster one.
CHUNKED_GROUP_NORM_MIN_PIXELS = 256 * 256
CHUNKED_GROUP_NORM_MAX_ROWS = 4 * 32  # samples x groups: from batch 8 torch's blocks fill the card
GROUP_NORM_CHUNKS = 64


def chunked_group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                       eps: float, chunks: int = GROUP_NORM_CHUNKS) -> torch.Tensor:
    """F.group_norm with each group's moments reduced as `chunks` equal parts (many blocks) and combined, in
    float32 (closer to a float32 GroupNorm than torch's half-precision kernel), then one scale-and-shift pass."""
    n, c = x.shape[:2]
    per_group = x[0, : c // groups].numel()
    k = chunks if per_group % chunks == 0 else 1
    var_k, mean_k = torch.var_mean(x.reshape(n, groups, k, per_group // k).float(), dim=-1, correction=0)
    mean = mean_k.mean(-1, keepdim=True)
    var = (var_k + (mean_k - mean) ** 2).mean(-1, keepdim=True)  # the parts' spread around the group's mean
    rstd = torch.rsqrt(var + eps)  # [n, groups, 1]
    w = torch.ones(c, device=x.device) if weight is None else weight.float()
    scale = w.view(1, groups, -1) * rstd  # [n, groups, c / groups]
    shift = -mean * scale if bias is None else bias.float().view(1, groups, -1) - mean * scale
    shape = (n, c) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.reshape(shape), x, scale.reshape(shape)).to(x.dtype)


class ChunkedGroupNorm(nn.GroupNorm):
    """nn.GroupNorm that takes chunked_group_norm where torch's kernel leaves the card idle."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)  # inductor splits it itself
        few_rows = x.shape[0] * self.num_groups <= CHUNKED_GROUP_NORM_MAX_ROWS
        if few_rows and x[0, 0].numel() >= CHUNKED_GROUP_NORM_MIN_PIXELS:
            return chunked_group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def chunk_group_norms(module: nn.Module) -> int:
    """Turns module's GroupNorm layers into ChunkedGroupNorm (same parameters); returns how many."""
    layers = [m for m in module.modules() if type(m) is nn.GroupNorm]
    for layer in layers:
        layer.__class__ = ChunkedGroupNorm
    return len(layers)


@dataclass(frozen=True)
class FastSettings:
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    compile_batches: tuple[int, ...] = (1,)  # compiling costs 50-100 s per module and shape on a first start
    compile_controlnet: bool = False
    # The VAE decoder compiled for one image at the fast size (other batches run it eagerly).
    compile_vae: bool = False
    # Compiled modules as AOTInductor packages (aot.py) built by child processes, not torch.compile in this one: a
    # first start is ready on uncompiled graphs and swaps each compiled one in when its build ends (`upgrade`); a
    # restart loads the packages in a moment.
    aot: bool = False
    compile_on_cpu: bool = False  # tests: compile for the CPU too (the graphs' bodies then run eagerly)
    # The UNet's and the ControlNet's convolution weights kept in channels_last, the layout their compiled
    # convolutions read: otherwise every compiled call converts them first (~0.7 ms of a compiled UNet call on an
    # H100 by the kernels probe, BENCHMARKS.md). Opt-in until measured on a card through the engine: it changes the
    # shared models, so the engine's eager paths and trainings see it too.
    channels_last: bool = False
    # Batch sizes whose graphs add the one slot's LoRA into the UNet's weights (SlotMerge) around the plain UNet
    # instead of computing slot updates in every layer; a batch of one image has one user's rows only.
    merged_batches: tuple[int, ...] = (1,)
    lora_targets: tuple[str, ...] = LORA_TARGETS
    width: int = 512
    height: int = 512


@dataclass
class StepGraph:
    """One UNet call over `rows` rows of static buffers: `sample` (rows,4,h,w), `t` (rows,), `embeds` (rows,77,768),
    for ControlNet `cond` (rows,3,H,W) and `cond_scale` (rows,1,1,1); `run()` replays it (eagerly on the CPU) and
    leaves the prediction in `out`. LoRA comes from the slot layers, whose index the caller sets for all rows: the
    layers in `live` compute their updates, or a `merged` graph runs the plain UNet on weights that hold row 0's
    slot's LoRA (FastGenerator merges it in first and leaves it there: see `settle`)."""

    rows: int
    body: Callable[[], torch.Tensor]
    buffers: dict[str, torch.Tensor]
    graph: torch.cuda.CUDAGraph | None = None
    out: torch.Tensor | None = None
    compiled: bool = False
    live: frozenset[str] = frozenset()
    merged: bool = False
    seconds: float = 0.0
    calls: int = 0

    def run(self) -> torch.Tensor:
        self.calls += 1
        if self.graph is None:
            self.out = self.body()
        else:
            self.graph.replay()
        return self.out


class FastGenerator:
    """Captured UNet calls for the scheduler's batched denoising (multigen.denoise_step); built once at engine
    start (`warm_up`). Batch sizes count images; with CFG each image is two rows, so the graphs hold 2, 4, 8, 16."""

    def __init__(self, models: Models, settings: FastSettings = FastSettings(), cache_dir: Path | None = None):
        self.models, self.settings = models, settings
        self.pipe: StableDiffusionPipeline = models.pipe
        if settings.channels_last:  # before any graph or package reads the weights
            for model in (self.pipe.unet, models.controlnet):
                if model is not None:
                    model.to(memory_format=torch.channels_last)
        self.device, self.dtype = models.device, models.dtype
        self.latent_hw = (settings.height // self.pipe.vae_scale_factor, settings.width // self.pipe.vae_scale_factor)
        self.rows = tuple(2 * b for b in settings.batch_sizes)
        self.graphs: dict[tuple[bool, int], StepGraph] = {}
        # Without CUDA (tests) the same buffers and step body run eagerly.
        self.use_graphs = self.device.type == "cuda"
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._compiled: dict[str, Callable] = {}
        self.compiling = self.device.type == "cuda" or settings.compile_on_cpu
        # AOT packages: loaded ones by name ("unet@1", "cn@1", "vae@1"), and the names whose builds run.
        self.builds = aot.Builds(Path(cache_dir or Path.home() / ".cache" / "portrait-engine") / "aot")
        self._runners: dict[str, Callable] = {}
        self._building: dict[str, str] = {}  # spec key -> name
        self._pending: list[tuple[int, aot.Spec]] = []  # (batch, spec) for _start_builds
        self._aot_failed: dict[str, str] = {}
        self._built: set[str] = set()  # names whose package this process's builds made
        self.info: dict = {}
        self.served = frozenset(aot.served_layers(models.slots, settings.lora_targets))
        # The text encoder's graph computes every text-encoder slot layer (small projections over 77 tokens: cheap).
        self.text_served = frozenset(name for name in models.slots.layers if name.startswith("text_encoder."))
        self.text: StepGraph | None = None
        self.merge = SlotMerge(models.slots, self.served) if settings.merged_batches else None
        # merge.add (reading row 0's slot from the index buffer) and merge.restore, each captured in a graph.
        self.merging: StepGraph | None = None
        self.unmerging: StepGraph | None = None
        # The slot whose LoRA the UNet's weights hold now: a one-image request's 20 steps merge it once, not 20
        # times (0.36 ms each way per step on the H200). None: the base weights.
        self.resident: int | None = None
        # The slot graphs gather each row's slot once per layer group (SlotLoRA.hoisted), into buffers made now.
        self.hoist = models.slots.reserve_rows(self.served, max(self.rows, default=0), self.dtype)
        self._text_forward = self.pipe.text_encoder.forward  # the module's own, bound before `encoding` shadows it
        decoder = self.pipe.vae.decoder
        self._decoder_forward = type(decoder).forward.__get__(decoder)  # the class's: a compiled one may shadow it
        self.vae_batches: list[int] = []  # ENGINE_FAST_COMPILE_VAE: the image counts the decoder is compiled for
        self.vae_graphs: dict[int, StepGraph] = {}  # with `aot`: its packages' graphs by image count

    @property
    def vae_compiled(self) -> bool:
        """The compiled decoder is in place (for the batches in vae_batches)."""
        return bool(self.vae_batches)

    # --- warm-up ------------------------------------------------------------------------------------------------

    def warm_up(self) -> dict:
        """Compiles (where configured) and captures every graph; returns what the ready event reports."""
        started = time.monotonic()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            chunk_group_norms(self.pipe.vae.decoder)
        if self.settings.compile_vae and self.compiling:
            self._compile_decoder()
        for controlnet in self._graph_kinds():
            for batch in self.settings.batch_sizes:
                try:
                    self.graphs[(controlnet, 2 * batch)] = self._build(controlnet, batch)
                except Exception:
                    if batch not in self.settings.compile_batches or not self.compiling:
                        raise
                    # A compiler failure costs speed, not service: capture the eager modules instead.
                    log.exception("compiling failed for batch %d; capturing it uncompiled", batch)
                    for name in (f"unet@{batch}", f"cn@{batch}"):
                        if self._runners.pop(name, None) is not None:
                            self._aot_failed[name] = "its graph could not be captured"
                    self._compiled = {k: v for k, v in self._compiled.items() if not k.endswith(f"@{batch}")}
                    self.settings = replace(self.settings, compile_batches=tuple(
                        b for b in self.settings.compile_batches if b != batch))
                    self.graphs[(controlnet, 2 * batch)] = self._build(controlnet, batch)
        self.text = self._build_text()
        if self.merge is not None:
            self.merging = StepGraph(rows=1, body=self.merge.add, buffers={})
            self.unmerging = StepGraph(rows=1, body=self.merge.restore, buffers={})
            for step in (self.merging, self.unmerging):
                self._capture(step, frozenset(), warm=1)  # (add reads the NONE slot here: zeros, and restore)
        self._start_builds()
        self._describe(warmup_s=round(time.monotonic() - started, 2))
        if self.device.type == "cuda":
            self.info["peak_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
            self.info["reserved_gib"] = round(torch.cuda.memory_reserved(self.device) / 2**30, 2)
        log.info("fast path warm: %s", self.info)
        return self.info

    def _describe(self, **extra) -> None:
        """self.info: what the ready event reports (after an upgrade, what Engine.warmup holds; the log says it)."""
        self.info = {
            **self.info,
            **extra,
            "fast": True,
            "batch_sizes": list(self.settings.batch_sizes),
            "compiled": sorted({f"{'controlnet' if c else 'unet'}@{r // 2}" for (c, r), g in self.graphs.items()
                                if g.compiled}),
            "graphs": len(self.graphs) + (self.text is not None),
            "compiled_vae": self.vae_compiled,
            "compiled_vae_batches": self.vae_batches,
            "merged": sorted({r // 2 for (_, r), g in self.graphs.items() if g.merged}),
            "lora_layers": len(self.served),
            "size": [self.settings.width, self.settings.height],
        }
        if self.settings.aot:
            self.info["aot"] = {"loaded": sorted(self._runners), "building": sorted(self._building.values()),
                                "failed": dict(self._aot_failed)}

    def _graph_kinds(self) -> list[bool]:
        """The graph kinds captured at each batch size: txt2img, and ControlNet + UNet where one is loaded."""
        return [False] + ([True] if self.models.controlnet is not None else [])

    def _modules(self, controlnet: bool, batch: int, b: dict[str, torch.Tensor],
                 zeros: dict) -> tuple[Callable, Callable | None]:
        unet, cn = self.pipe.unet, self.models.controlnet if controlnet else None
        if batch in self.settings.compile_batches and self.compiling and self.settings.aot:
            # A package, or the module itself while its package builds (upgrade() swaps it in). A merged graph (its
            # one user's LoRA in the weights) runs the plain UNet's; the others the slot layers', whose rows' slots
            # the graph gathers (SlotLoRA.hoisted) into buffers the package reads as inputs.
            residuals = (zeros["mid_block_additional_residual"], *zeros["down_block_additional_residuals"]) \
                if zeros else ()  # the package's inputs after the embeddings: (mid, *down), none without a ControlNet
            inputs = (b["sample"], b["t"], b["embeds"], *residuals)
            if batch in self.settings.merged_batches:
                unet = self._package(f"unet@{batch}", "unet", self.pipe.unet, aot.UNetCall(self.pipe.unet), inputs,
                                     AotUNet) or unet
            else:
                rows = (*(g.row_A for g in self.hoist), *(g.row_Bt for g in self.hoist))
                wrapper = aot.SlotUNetCall(self.pipe.unet, self.models.slots, self.hoist, len(residuals))
                layout = aot.slot_layout(self.models.slots, self.settings.lora_targets)
                unet = self._package(f"unet@{batch}", "unet-slots", self.pipe.unet, wrapper, (*inputs, *rows),
                                     lambda runner: AotUNet(runner, rows), layout) or unet
            if cn is not None and self.settings.compile_controlnet:
                inputs = (b["sample"], b["t"], b["embeds"], b["cond"])
                cn = self._package(f"cn@{batch}", "controlnet", cn, aot.ControlNetCall(cn), inputs,
                                   AotControlNet) or cn
        elif batch in self.settings.compile_batches and self.compiling:
            # One compiled UNet per batch, dynamic=False, for both graph kinds (see _residuals); the ControlNet
            # only when configured. Each costs ~80-100 s on a first start.
            unet = self._compiled.setdefault(f"unet@{batch}", torch.compile(unet, mode="default", dynamic=False))
            if cn is not None and self.settings.compile_controlnet:
                cn = self._compiled.setdefault(f"cn@{batch}", torch.compile(cn, mode="default", dynamic=False))
        return unet, cn

    def _package(self, name: str, kind: str, model: nn.Module, wrapper: nn.Module, inputs: tuple, adapter,
                 slots: str = ""):
        """`adapter` over the loaded package for this module and these inputs; or None, after starting its build
        (in a child process) if none runs."""
        if name in self._runners or name in self._aot_failed:
            return self._runners.get(name)
        spec = aot.Spec.of(kind, model, inputs, slots)
        path = self.builds.path(spec)
        if path.exists():
            try:
                started = time.monotonic()
                self._runners[name] = adapter(aot.load(path, wrapper, spec))
                log.info("loaded %s from %s in %.2f s", name, path, time.monotonic() - started)
                return self._runners[name]
            except Exception as error:  # noqa: BLE001 (a bad package costs speed, not service: build it again)
                log.exception("could not load %s; building it again", path)
                path.unlink(missing_ok=True)
                if name in self._built:  # this process's own build: do not loop
                    self._aot_failed[name] = f"{type(error).__name__}: {error}"[:300]
                    return None
        if spec.key() not in self._building:
            self._building[spec.key()] = name
            self._pending.append((int(name.split("@")[1]), spec))
        return None

    def _start_builds(self) -> None:
        """The builds asked for since the last call, one image's first (they serve the most requests), as the
        build processes come free (aot.MAX_RUNNING at once)."""
        for _, spec in sorted(self._pending, key=lambda pending: pending[0]):  # (stable: in order asked, per batch)
            self.builds.start(spec)
        self._pending.clear()

    @property
    def building(self) -> bool:
        return bool(self._building)

    def upgrade(self) -> list[str]:
        """Swaps in the packages whose builds have ended, capturing again the graphs that call them; returns their
        names. Call it between steps (the scheduler's caller does): it replaces graphs."""
        ended = self.builds.poll() if self._building else []
        names = []
        for spec, result in ended:
            name = self._building.pop(spec.key(), None)
            if name is None:
                continue
            if isinstance(result, Exception):
                log.error("%s stays uncompiled: %s", name, result)
                self._aot_failed[name] = str(result)[:300]
            else:
                names.append(name)
                self._built.add(name)
        for name in names:
            started = time.monotonic()
            try:
                if name.startswith("vae@"):
                    self._compile_decoder()
                    continue
                kind, batch = name.split("@")
                for controlnet in [True] if kind == "cn" else self._graph_kinds():
                    self.graphs[(controlnet, 2 * int(batch))] = self._build(controlnet, int(batch))
            except Exception as error:  # noqa: BLE001 (the graphs it would replace still serve)
                log.exception("could not swap in %s", name)
                self._aot_failed[name] = f"{type(error).__name__}: {error}"[:300]
                self._runners.pop(name, None)
            finally:
                log.info("swapped in %s in %.2f s", name, time.monotonic() - started)
        self._start_builds()  # (a package that would not load is built again)
        if ended:
            self._describe()
        return names

    def wait_for_builds(self, timeout: float | None = None) -> list[str]:
        """Blocks until the running builds end, then upgrade()s (benchmarks and tests: a first start's full speed)."""
        self.builds.wait(timeout)
        return self.upgrade()

    def _residuals(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Zero ControlNet residuals for a txt2img graph at a compiled batch size: with them its UNet call has the
        ControlNet graph's signature, so one compiled UNet serves both (a second compile would cost another
        ~80 s of warm-up) and /pose gets the compiled UNet. Adding zeros leaves every value as it was."""
        if self.models.controlnet is None or b["sample"].shape[0] // 2 not in self.settings.compile_batches:
            return {}
        cond = torch.zeros(len(b["sample"]), 3, self.settings.height, self.settings.width, device=self.device,
                           dtype=self.dtype)
        with torch.no_grad():
            down, mid = self.models.controlnet(b["sample"], b["t"], encoder_hidden_states=b["embeds"],
                                               controlnet_cond=cond, return_dict=False)
        return dict(down_block_additional_residuals=[torch.zeros_like(d) for d in down],
                    mid_block_additional_residual=torch.zeros_like(mid))

    def _build(self, controlnet: bool, batch: int) -> StepGraph:
        started = time.monotonic()
        rows, (h, w) = 2 * batch, self.latent_hw
        dev, dt = self.device, self.dtype
        text = self.pipe.text_encoder.config
        b = {
            "sample": torch.zeros(rows, self.pipe.unet.config.in_channels, h, w, device=dev, dtype=dt),
            "t": torch.full((rows,), 999.0, device=dev),
            "embeds": torch.zeros(rows, text.max_position_embeddings, self.pipe.unet.config.cross_attention_dim,
                                  device=dev, dtype=dt),
        }
        if controlnet:
            b["cond"] = torch.zeros(rows, 3, self.settings.height, self.settings.width, device=dev, dtype=dt)
            b["cond_scale"] = torch.ones(rows, 1, 1, 1, device=dev, dtype=dt)
        residuals = self._residuals(b)  # (the ControlNet's shapes, for a package's inputs too)
        unet, cn = self._modules(controlnet, batch, b, residuals)
        zeros = {} if controlnet else residuals
        merge = self.merge if batch in self.settings.merged_batches else None

        def call() -> torch.Tensor:
            extra = zeros
            if cn is not None:
                # multigen's products: conditioning_scale 1, then each row's own scale.
                down, mid = cn(b["sample"], b["t"], encoder_hidden_states=b["embeds"], controlnet_cond=b["cond"],
                               conditioning_scale=1.0, guess_mode=False, return_dict=False)
                extra = dict(down_block_additional_residuals=[d * b["cond_scale"] for d in down],
                             mid_block_additional_residual=mid * b["cond_scale"])
            with self.models.slots.hoisted(() if merge else self.hoist):
                return unet(b["sample"], b["t"], encoder_hidden_states=b["embeds"], return_dict=False, **extra)[0]

        step = StepGraph(rows=rows, body=call, buffers=b,
                         compiled=unet is not self.pipe.unet, live=frozenset() if merge else self.served,
                         merged=merge is not None)
        self._capture(step, step.live)
        step.seconds = time.monotonic() - started
        log.info("captured %s batch %d in %.1f s", "controlnet+unet" if controlnet else "unet", batch, step.seconds)
        return step

    def _compile_decoder(self) -> None:
        """The VAE decoder compiled for one image's latents at the fast size; other shapes call its own forward. It
        is compiled here, not on a request's first decode: compiling costs tens of seconds on a first start. With
        `aot` there is a package for one image and one for a shared decode's most (multigen.DECODE_BATCH: requests
        that end on one step), each loaded (or its build started) and captured in a graph of its own; a decode of
        more than half the larger batch is padded to it (each image is decoded on its own)."""
        decoder = self.pipe.vae.decoder
        own = self._decoder_forward
        image = (self.pipe.vae.config.latent_channels, *self.latent_hw)
        if self.settings.aot:
            steps: dict[int, StepGraph] = {}
            for batch in VAE_BATCHES:
                if batch in self.vae_graphs:  # captured when an earlier package came
                    steps[batch] = self.vae_graphs[batch]
                    continue
                z = torch.zeros((batch, *image), device=self.device, dtype=self.pipe.vae.dtype)
                runner = self._package(f"vae@{batch}", "vae", self.pipe.vae, aot.DecoderCall(decoder), (z,),
                                       lambda r: r)
                if runner is not None:
                    steps[batch] = StepGraph(rows=batch, body=lambda r=runner, z=z: r(z), buffers={"z": z},
                                             compiled=True)
                    self._capture(steps[batch], frozenset())
            if not steps:
                return
            sizes = {n: next(b for b in sorted(steps) if b >= n) for n in range(1, max(steps) + 1)
                     if n in steps or any(b >= n > b // 2 for b in steps)}

            def compiled(latents: torch.Tensor) -> torch.Tensor:
                step = steps[sizes[len(latents)]]
                step.buffers["z"][: len(latents)].copy_(latents)
                return step.run()[: len(latents)].clone()  # the buffer is the next replay's
        else:
            sizes = {1: 1}
            compiled = torch.compile(own, mode="default", dynamic=False)

        def forward(z: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if tuple(z.shape[1:]) == image and len(z) in sizes and not args and not kwargs:
                return compiled(z)
            return own(z, *args, **kwargs)

        try:
            with torch.no_grad():
                for batch in sorted(set(sizes.values())):
                    for _ in range(2):
                        forward(torch.zeros((batch, *image), device=self.device, dtype=self.pipe.vae.dtype))
        except Exception:  # noqa: BLE001 (a compiler failure costs speed, not service)
            log.exception("torch.compile of the VAE decoder failed; decoding eagerly")
            return
        decoder.forward = forward  # an instance attribute: nn.Module.__call__ finds it before the class's
        self.vae_batches = sorted(set(sizes.values()))
        self.vae_graphs = steps if self.settings.aot else {}

    def _build_text(self) -> StepGraph:
        """The text encoder over one prompt's token ids (what diffusers' encode_prompt passes it, once for the
        prompt and once for the negative): eagerly it is ~150 small launches, 6 ms of host time per call."""
        text = self.pipe.text_encoder.config
        b = {"ids": torch.zeros(1, text.max_position_embeddings, dtype=torch.long, device=self.device)}
        step = StepGraph(rows=1, body=lambda: self._text_forward(b["ids"])[0], buffers=b)
        self._capture(step, self.text_served)
        return step

    def _capture(self, step: StepGraph, served: frozenset[str], warm: int = 3) -> None:
        """Captures step.body into step.graph (CUDA only), the slot layers in `served` computing from the slot index."""
        if not self.use_graphs:
            return
        dev, slots = self.device, self.models.slots
        # The slot layers read index[:rows] of the table's preallocated index: captured once, set per call.
        with torch.no_grad(), slots.forced_live(served), slots.use([NONE] * step.rows):
            stream = torch.cuda.Stream(dev)
            stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(stream):
                for _ in range(warm):  # compiles, autotunes cuDNN and warms the allocator before capture
                    step.body()
            torch.cuda.current_stream(dev).wait_stream(stream)
            step.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(step.graph, pool=self._pool):
                step.out = step.body()
            torch.cuda.synchronize(dev)

    @contextmanager
    def encoding(self) -> Iterator[None]:
        """Inside, the text encoder's calls that its graph holds (one prompt's ids, no attention mask, no hidden
        states) replay the graph, with the LoRA of the slot the caller set (slots.use); others run eagerly. Only
        around the slot path's prompt encoding (multigen.Generation): a peft adapter in the text encoder would not
        be in the graph."""
        encoder = self.pipe.text_encoder
        encoder.forward = self._encode  # an instance attribute: nn.Module.__call__ finds it before the class's
        try:
            yield
        finally:
            del encoder.forward

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        step, slots = self.text, self.models.slots
        if (step is None or attention_mask is not None or any(kwargs.values())
                or input_ids.shape != step.buffers["ids"].shape or slots.active != 1):
            return self._text_forward(input_ids, attention_mask=attention_mask, **kwargs)
        step.buffers["ids"].copy_(input_ids)
        with torch.no_grad(), slots.forced_live(self.text_served):  # (the CPU's eager body: as the graph computes)
            out = step.run()
        return (out.clone(),)  # encode_prompt reads [0]; the buffer is the next replay's

    # --- calls ----------------------------------------------------------------------------------------------------

    def graph_for(self, sample: torch.Tensor, controlnet: bool, index: Sequence[int] = ()) -> StepGraph | None:
        """The smallest graph that holds this batch of rows (with these slots: a merged graph serves one slot
        only), or None (another latent size, or more rows than captured)."""
        if tuple(sample.shape[2:]) != self.latent_hw:
            return None
        for rows in sorted(r for r in self.rows if r >= len(sample)):
            step = self.graphs.get((controlnet, rows))
            if step is not None and not (step.merged and len(set(index)) > 1):
                return step
        return None

    @torch.no_grad()
    def predict(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        embeddings: torch.Tensor,
        index: torch.Tensor,
        control: torch.Tensor | None = None,
        cond_scale: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The UNet's prediction for these rows (slot `index` per row, NONE for none) through a graph, or None when
        none holds them. Rows past the batch are left as they were: every row is computed independently."""
        rows = index.tolist()
        step = self.graph_for(sample, control is not None, rows)
        slots = self.models.slots
        if step is None or not {n for n in slots.layers_of(rows) if n.startswith("unet.")} <= self.served:
            self.settle()  # the caller runs the UNet eagerly, on its own weights
            return None  # (also for a LoRA on layers the graphs do not update)
        n, b = len(sample), step.buffers
        b["sample"][:n].copy_(sample)
        b["t"][:n].copy_(timesteps)  # device to device: no sync
        b["embeds"][:n].copy_(embeddings)
        if control is not None:
            b["cond"][:n].copy_(control)
            b["cond_scale"][:n].copy_(cond_scale)
        padded = torch.full((step.rows,), NONE, dtype=torch.long)
        padded[:n] = index
        with slots.forced_live(step.live), slots.use(padded):  # (the CPU's eager body: as the graph computes)
            if step.merged:
                self._hold(rows[0])
            else:
                self.settle()
            out = step.run()
        # The output buffer is the next replay's: the caller keeps its own copy.
        return out[:n].clone()

    def _hold(self, slot: int) -> None:
        """The UNet's weights hold `slot`'s LoRA (their own for NONE); the caller has set the slot index."""
        slot = None if slot == NONE else slot
        if slot == self.resident:
            return
        self.settle()
        if slot is not None:
            self.resident = slot  # first: should the add fail half way, settle() still restores
            self.merging.run()

    def settle(self) -> None:
        """Puts the UNet's own weights back if a slot's LoRA is merged into them. The merged graphs leave it there
        from one call to the next; whatever else reads the UNet's weights (another graph, an eager call, a training
        step) or may change that slot (its request ending) calls this first: predict and the scheduler do."""
        if self.resident is not None:
            self.unmerging.run()
            self.resident = None  # after: a restore that raised is tried again


class AotUNet:
    """A UNet package called as _build's step calls the UNet; a slot package's `rows` (the hoisted rows' buffers)
    follow the residuals."""

    def __init__(self, runner, rows: tuple[torch.Tensor, ...] = ()):
        self.runner, self.rows = runner, rows

    def __call__(self, sample, t, encoder_hidden_states, return_dict=False, down_block_additional_residuals=(),
                 mid_block_additional_residual=None):
        residuals = () if mid_block_additional_residual is None else (
            mid_block_additional_residual, *down_block_additional_residuals)
        return (self.runner(sample, t, encoder_hidden_states, *residuals, *self.rows),)


class AotControlNet:
    """A ControlNet package (conditioning scale 1) called as _build's step calls the ControlNet."""

    def __init__(self, runner):
        self.runner = runner

    def __call__(self, sample, t, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0, guess_mode=False,
                 return_dict=False):
        assert conditioning_scale == 1.0 and not guess_mode  # what the package was built for
        mid, *down = self.runner(sample, t, encoder_hidden_states, controlnet_cond)
        return list(down), mid


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

    def flag(name: str, default: bool) -> bool:
        return env.get(name, "1" if default else "0").strip().lower() in ("1", "true", "on")

    batch_sizes = sizes("ENGINE_FAST_BATCHES", BATCH_SIZES)
    # Packages make the compiled ControlNet and VAE decoder affordable (a restart loads them): on by default with them.
    ahead = flag("ENGINE_FAST_AOT", True)
    width, _, height = env.get("ENGINE_FAST_SIZE", "512x512").lower().partition("x")
    return FastSettings(
        width=int(width),
        height=int(height or width),
        batch_sizes=batch_sizes,
        # Packages build in other processes: the 8-image slot-layer UNet too (with torch.compile it would cost ~80 s
        # more of every first start's warm-up).
        compile_batches=sizes("ENGINE_FAST_COMPILE", (1, 8) if ahead else (1,)),
        compile_controlnet=flag("ENGINE_FAST_COMPILE_CONTROLNET", ahead),
        compile_vae=flag("ENGINE_FAST_COMPILE_VAE", ahead),
        aot=ahead,
        channels_last=flag("ENGINE_FAST_CHANNELS_LAST", False),
        merged_batches=sizes("ENGINE_FAST_MERGE", (1,)),
        lora_targets=tuple(t.strip() for t in env.get("ENGINE_FAST_LORA_TARGETS", ",".join(LORA_TARGETS)).split(",")
                           if t.strip()),
    )


def inductor_cache(cache_dir: Path) -> None:
    """Keeps inductor's compiled kernels on disk (under the engine's cache folder) so a restart is quick."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
