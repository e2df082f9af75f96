"""The fast path's compiled modules built ahead of time (AOTInductor), in processes of their own, and loaded without
tracing (issue 8).

torch.compile traces in the engine's own process: ~50-80 s per module on a first start, 15-20 s again on every restart
even from inductor's cache, and it cannot run beside serving (its tracer patches nn.Module.__call__ for the whole
process: BENCHMARKS.md). Here a module (the UNet at one image with CFG, the UNet over several users' slot layers, the
ControlNet, the VAE decoder) is exported
and compiled into a `.pt2` package by `python -m portrait_engine.aot SPEC OUT` in a child process, kept under the
engine's cache folder by a key of everything it depends on, and loaded in a moment onto the live module's own tensors:
the package holds no weights, and the loader is given the module's parameters themselves (user-managed constants,
no copy), so whatever writes into them in place (the one-image LoRA merge, fast.SlotMerge) reaches the package.

    spec = Spec.of("unet", unet, inputs)   # the live module and example inputs (shapes and dtypes only count)
    builds = Builds(cache_dir); builds.start(spec)  ... builds.poll() -> [(spec, path or error)]
    runner = load(path, UNetCall(unet))    # called like UNetCall(unet)
"""

import ctypes
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .multilora import NONE, SlotLoRA

log = logging.getLogger(__name__)

FORMAT = 3  # bump when the wrappers or the package settings change
# The weights stay out of the package, and every one of them, however small, stays a constant the loader is given:
# by default inductor writes tensors of up to 8 values into the kernels' code as numbers, and a package built on one
# set of weights would compute with those on another (tests/test_aot.py).
PACKAGE_CONFIG = {"aot_inductor.package_constants_in_so": False, "always_keep_tensor_constants": True}


class UNetCall(nn.Module):
    """The fast path's UNet call: (sample, t, embeds[, mid, *down]) -> prediction. With a ControlNet configured the
    UNet takes its residuals (zeros for txt2img), so one package serves both kinds of step."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, t, embeds, *residuals):
        extra = {}
        if residuals:
            mid, *down = residuals
            extra = dict(down_block_additional_residuals=list(down), mid_block_additional_residual=mid)
        return self.unet(sample, t, encoder_hidden_states=embeds, return_dict=False, **extra)[0]


class SlotUNetCall(UNetCall):
    """UNetCall for a batch of several users' rows: every served slot layer adds each row's own LoRA update, read
    from the rows' gathered slots (multilora.SlotLoRA.hoisted), which come as the trailing inputs: each group's A
    rows, then each group's scaled B rows. The serving graph gathers the rows into those buffers before each call,
    so the package holds no slot at all and a user's LoRA reaches it as data."""

    def __init__(self, unet: nn.Module, lora: SlotLoRA, groups: list, residuals: int):
        super().__init__(unet)
        object.__setattr__(self, "lora", lora)  # not a submodule: its buffers are not the package's constants
        self.groups, self.residuals = groups, residuals
        self.served = frozenset(name for group in groups for name in group.names)

    def forward(self, sample, t, embeds, *rest):
        k, g = self.residuals, len(self.groups)
        residuals, rows_a, rows_bt = rest[:k], rest[k : k + g], rest[k + g :]
        saved = [(group.row_A, group.row_Bt, group.hoisted_rows) for group in self.groups]
        try:
            for group, a, bt in zip(self.groups, rows_a, rows_bt, strict=True):
                group.row_A, group.row_Bt, group.hoisted_rows = a, bt, len(sample)
            with self.lora.forced_live(self.served), self.lora.use([NONE] * len(sample)):
                return super().forward(sample, t, embeds, *residuals)
        finally:
            for group, (a, bt, rows) in zip(self.groups, saved):
                group.row_A, group.row_Bt, group.hoisted_rows = a, bt, rows


def slot_layout(lora: SlotLoRA, served: tuple[str, ...]) -> str:
    """What a slot package depends on of the slot table: what makes its layers and groups, and which it serves."""
    return json.dumps({"slots": lora.slots, "max_rank": lora.max_rank, "dtype": str(lora.dtype).split(".")[-1],
                       "targets": list(lora.targets["unet"]), "served": list(served)})


def served_layers(lora: SlotLoRA, served: tuple[str, ...]) -> list[str]:
    """The UNet's slot layers whose LoRA the fast path's graphs compute (fast.LORA_TARGETS)."""
    return [name for name in lora.layers if name.startswith("unet.") and any(name.endswith("." + t) for t in served)]


class ControlNetCall(nn.Module):
    """(sample, t, embeds, cond) -> (mid, *down), at conditioning scale 1 (the fast path scales each row after)."""

    def __init__(self, controlnet: nn.Module):
        super().__init__()
        self.controlnet = controlnet

    def forward(self, sample, t, embeds, cond):
        down, mid = self.controlnet(sample, t, encoder_hidden_states=embeds, controlnet_cond=cond, return_dict=False)
        return (mid, *down)


class DecoderCall(nn.Module):
    """The VAE decoder: latents (after post_quant_conv) -> image."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, z):
        return self.decoder(z)


WRAPPERS = {"unet": UNetCall, "controlnet": ControlNetCall, "vae": DecoderCall}


@dataclass(frozen=True)
class Spec:
    """What a package is built for: the module's kind and diffusers config, its dtype and device, the example inputs'
    shapes and dtypes, and the versions and card that compiled code depends on."""

    kind: str  # a WRAPPERS key
    config: str  # the diffusers config as JSON (for the VAE: the whole AutoencoderKL's)
    dtype: str
    device: str  # "cuda" or "cpu"
    inputs: tuple[tuple[tuple[int, ...], str], ...]
    platform: str  # torch, diffusers and the card (or "cpu")
    slots: str = ""  # unet-slots: slot_layout()
    layout: str = ""  # the module's 4-D weights: "" (torch's default) or "channels_last" (weights_layout)
    formats: tuple[str, ...] = ()  # each input's memory format, the same words (memory_format_of)

    @staticmethod
    def of(kind: str, model: nn.Module, inputs: tuple[torch.Tensor, ...], slots: str = "") -> "Spec":
        """`model` is the diffusers model (for the VAE the AutoencoderKL: its decoder is what is compiled)."""
        import diffusers

        param = next(model.parameters())
        device = param.device.type
        card = torch.cuda.get_device_name(param.device) if device == "cuda" else "cpu"
        config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
        return Spec(
            kind=kind, config=json.dumps(config, sort_keys=True, default=list), dtype=str(param.dtype).split(".")[-1],
            device=device, inputs=tuple((tuple(x.shape), str(x.dtype).split(".")[-1]) for x in inputs),
            platform=f"torch {torch.__version__}; diffusers {diffusers.__version__}; {card}", slots=slots,
            layout=weights_layout(model), formats=tuple(memory_format_of(x) for x in inputs),
        )

    def key(self) -> str:
        text = json.dumps({"format": FORMAT, "package": PACKAGE_CONFIG, **self.__dict__}, sort_keys=True)
        return f"{self.kind}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @staticmethod
    def from_json(text: str) -> "Spec":
        raw = json.loads(text)
        raw["inputs"] = tuple((tuple(shape), dtype) for shape, dtype in raw["inputs"])
        raw["formats"] = tuple(raw.get("formats", ()))
        return Spec(**raw)

    def build_module(self) -> nn.Module:
        """The wrapper over a module of this config (random weights: the package does not keep them)."""
        from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

        cls = {"unet": UNet2DConditionModel, "unet-slots": UNet2DConditionModel, "controlnet": ControlNetModel,
               "vae": AutoencoderKL}[self.kind]
        with torch.device(self.device):
            model = cls.from_config(json.loads(self.config))
        model = model.to(getattr(torch, self.dtype)).eval()
        if self.layout:
            model = model.to(memory_format=getattr(torch, self.layout))
        if self.kind == "unet-slots":
            return self._slot_wrapper(model)
        return WRAPPERS[self.kind](model.decoder if self.kind == "vae" else model)

    def _slot_wrapper(self, unet: nn.Module) -> SlotUNetCall:
        """The serving process's slot layers over `unet`: the same table layout, so the same layers in the same
        groups, in the same order as the inputs; without the slot buffers, which the rows' path does not read."""
        layout = json.loads(self.slots)
        lora = SlotLoRA(layout["slots"], layout["max_rank"], device=self.device, dtype=getattr(torch, layout["dtype"]))
        lora.install("unet", unet, layout["targets"])
        for layer in lora.layers.values():
            for name in ("slot_A", "slot_Bt", "slot_scale"):
                layer._buffers.pop(name)
        groups = lora.groups_of(served_layers(lora, tuple(layout["served"])))
        residuals = len(self.inputs) - 3 - 2 * len(groups)
        return SlotUNetCall(unet, lora, groups, residuals)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator(self.device).manual_seed(0)
        inputs = tuple(torch.randn(shape, generator=gen, device=self.device).to(getattr(torch, dtype))
                       for shape, dtype in self.inputs)
        return tuple(conform(x, f) for x, f in zip(inputs, self.formats)) + inputs[len(self.formats):]


def memory_format_of(x: torch.Tensor) -> str:
    """"channels_last" for a 4-D tensor laid out so (and not also in torch's default layout), else ""."""
    return "channels_last" if x.dim() == 4 and not x.is_contiguous() and \
        x.is_contiguous(memory_format=torch.channels_last) else ""


def conform(x: torch.Tensor, memory_format: str) -> torch.Tensor:
    """x in that memory format (a copy only where it lies otherwise)."""
    return x.contiguous(memory_format=getattr(torch, memory_format) if memory_format else torch.contiguous_format)


class Conformed:
    """A package called with each input in the memory format it was built for: AOTInductor reads an input with the
    strides it saw at build time and does not check them (a channels_last input to a package built on a contiguous
    one computes garbage: tests/test_aot.py). Where they already match, nothing is copied; in a CUDA graph the check
    runs at capture only."""

    def __init__(self, runner, formats: tuple[str, ...]):
        self.runner, self.formats = runner, formats

    def __call__(self, *inputs):
        conformed = tuple(conform(x, f) for x, f in zip(inputs, self.formats))
        return self.runner(*conformed, *inputs[len(self.formats):])

    def __getattr__(self, name: str):
        return getattr(self.runner, name)


def weights_layout(model: nn.Module) -> str:
    """How the module's 4-D weights (its convolutions') lie in memory: "" in torch's default layout, "channels_last"
    in that one (fast.FastSettings.channels_last). A package is compiled for one layout and reads the tensors it is
    given with that layout's strides, so the spec keys it and `load` checks it."""
    four = [p for p in model.parameters() if p.dim() == 4]
    if all(p.is_contiguous() for p in four):
        return ""
    if all(p.is_contiguous(memory_format=torch.channels_last) for p in four):
        return "channels_last"
    raise ValueError("the module's convolution weights lie in mixed layouts")


def build(spec: Spec, out: Path) -> None:
    """Exports and compiles spec's module into `out` (a .pt2 path), written under another name first and renamed, so
    a reader never sees half a package."""
    module, inputs = spec.build_module(), spec.example_inputs()
    with torch.no_grad():
        program = torch.export.export(module, inputs, strict=False)
    partial = out.with_name(f"{out.stem}.{os.getpid()}.partial.pt2")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(partial), inductor_configs=PACKAGE_CONFIG)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)  # a failed build leaves nothing behind


def constants_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def load(path: Path, wrapper: nn.Module, spec: Spec | None = None):
    """The package at `path`, computing with `wrapper`'s own tensors (which must stay alive: they do, in the
    engine's models). Run single-threaded: its calls are captured in CUDA graphs.

    The loader is made directly, as torch._inductor.aoti_load_package does for older packages: its usual path first
    compares the package's CPU vector ISA with this machine's, which compiles a test program per ISA on a process's
    first load (37.7 s of a 42.4 s restart on the H200 machine). The spec's key already holds the card and torch.
    With the spec it was built from, the wrapper's weights must lie as the package's did (weights_layout), and the
    runner takes its inputs in the formats it was built for (Conformed)."""
    from torch.export.pt2_archive._package import AOTICompiledModel

    layout = spec.layout if spec is not None else ""
    if weights_layout(wrapper) != layout:
        raise ValueError(f"{path.name} is built for weights in layout {layout or 'default'!r}, "
                         f"these are in {weights_layout(wrapper) or 'default'!r}")

    runner = AOTICompiledModel(torch._C._aoti.AOTIModelPackageLoader(str(path), "model", True, 1, -1))
    mine = constants_of(wrapper)
    wanted = runner.get_constant_fqns()
    missing = [name for name in wanted if name not in mine]
    if missing:
        raise ValueError(f"{path.name}: the module has no {missing[:3]} ({len(missing)} missing)")
    runner.load_constants({name: mine[name] for name in wanted}, check_full_update=True, user_managed=True)
    return Conformed(runner, spec.formats) if spec is not None else runner


def _follow_parent(parent: int) -> None:
    """In the build process: SIGTERM when the engine dies (prctl PR_SET_PDEATHSIG; set here, not in a preexec_fn,
    which may deadlock in a process with threads), and a lower priority than the serving process's."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass
    if os.getppid() != parent:  # the engine died before the signal was set
        sys.exit(1)
    os.nice(10)


LOCK_STALE_S = 1800  # a build lock this old is taken over whoever holds it (a build takes minutes)
# Build processes at once: each compiles on every core. On the H200 machine (16 cores) three at once took 129-183 s
# each, alone 87-127 s; the rest wait their turn, in the order started.
MAX_RUNNING = 3


def _lock_owner(lock: Path) -> int | None:
    """The build process holding this lock, or None if none does (no lock, a dead owner, or stale)."""
    try:
        owner, age = int(lock.read_text() or 0), time.time() - lock.stat().st_mtime
    except (OSError, ValueError):
        return None
    if owner <= 0 or age > LOCK_STALE_S:
        return None
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return owner


def _write_lock(lock: Path, pid: int, replace: bool) -> bool:
    """Writes `pid` into `lock` whole (a reader never sees half of it): over it (`replace`), or only if there is
    none (False if there is)."""
    staged = lock.with_name(f"{lock.name}.{os.getpid()}")
    staged.write_text(str(pid))
    try:
        if replace:
            os.replace(staged, lock)
        else:
            os.link(staged, lock)
        return True
    except FileExistsError:
        return False
    finally:
        staged.unlink(missing_ok=True)


def _release(lock: Path, pid: int) -> None:
    """Removes the lock if `pid` still holds it (after that process ended, another engine may have taken it)."""
    try:
        if int(lock.read_text() or 0) == pid:
            lock.unlink(missing_ok=True)
    except (OSError, ValueError):
        pass


class Builds:
    """Packages built by child processes under `folder`, each spec once across every engine that shares the folder
    (eight engines of an eight-GPU box would otherwise compile the same three modules eight times at once): a lock
    file names the process that builds it, and the other engines wait for its package; the build process removes the
    lock when it ends, and one that died is found by its pid. At most `max_running` run at once; the others are
    queued. The caller polls."""

    def __init__(self, folder: Path, max_running: int = MAX_RUNNING):
        self.folder, self.max_running = folder, max_running
        self.running: dict[str, tuple[Spec, subprocess.Popen, Path]] = {}
        self.waiting: dict[str, Spec] = {}  # built by another engine's process
        self.queued: dict[str, Spec] = {}  # until a build process is free, in the order started
        self._ended: list[tuple[Spec, Path | Exception]] = []  # for the next poll()

    def path(self, spec: Spec) -> Path:
        return self.folder / f"{spec.key()}.pt2"

    def _lock(self, key: str) -> Path:
        return self.folder / f"{key}.lock"

    def _take_lock(self, key: str) -> bool:
        lock = self._lock(key)
        for _ in range(2):
            if _write_lock(lock, os.getpid(), replace=False):  # this engine's, until its build process starts
                return True
            if _lock_owner(lock) is not None:
                return False
            lock.unlink(missing_ok=True)  # its build process died
        return False

    def start(self, spec: Spec) -> None:
        key = spec.key()
        if key not in self.running and key not in self.waiting:
            self.queued.setdefault(key, spec)
        self._launch()

    def _launch(self) -> None:
        while self.queued and len(self.running) < self.max_running:
            key = next(iter(self.queued))
            self._begin(self.queued.pop(key))

    def _begin(self, spec: Spec) -> None:
        key = spec.key()
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self._take_lock(key):
            self.waiting[key] = spec
            log.info("%s is being built by engine process %s; waiting for its package", key,
                     _lock_owner(self._lock(key)))
            return
        spec_file, log_file = self.folder / f"{key}.spec.json", self.folder / f"{key}.log"
        spec_file.write_text(spec.to_json())
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            with log_file.open("w") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "portrait_engine.aot", str(spec_file), str(self.path(spec)),
                     str(os.getpid())], env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except BaseException:
            self._lock(key).unlink(missing_ok=True)
            raise
        _write_lock(self._lock(key), proc.pid, replace=True)
        self.running[key] = (spec, proc, log_file)
        log.info("building %s in process %d (log %s)", key, proc.pid, log_file)

    def _reap(self) -> None:
        """Ended build processes: their outcome kept for poll(), their places given to queued builds."""
        for key, (spec, proc, log_file) in list(self.running.items()):
            if proc.poll() is None:
                continue
            del self.running[key]
            _release(self._lock(key), proc.pid)  # (a build process that was killed could not)
            path = self.path(spec)
            if proc.returncode == 0 and path.exists():
                self._ended.append((spec, path))
            else:
                tail = log_file.read_text(errors="replace")[-1500:] if log_file.exists() else ""
                self._ended.append((spec, RuntimeError(f"building {key} failed (exit {proc.returncode}): {tail}")))
        self._launch()

    def poll(self) -> list[tuple[Spec, Path | Exception]]:
        """The builds that ended since the last call: each spec with its package's path, or the error. A package
        another engine was building counts when it appears; if that engine's build ended without one, or the engine
        died, the build starts here."""
        self._reap()
        for key, spec in list(self.waiting.items()):
            if self.path(spec).exists():
                del self.waiting[key]
                self._ended.append((spec, self.path(spec)))
            elif _lock_owner(self._lock(key)) is None:
                del self.waiting[key]
                self.start(spec)
        ended, self._ended = self._ended, []
        return ended

    def wait(self, timeout: float | None = None) -> None:
        """Until this engine's builds (queued ones too) end and the packages it waits for appear (or their builders
        are gone)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        left = lambda: None if deadline is None else max(0.0, deadline - time.monotonic())  # noqa: E731
        while self.running:
            for _, proc, _ in list(self.running.values()):
                proc.wait(left())
            self._reap()
        while any(not self.path(s).exists() and _lock_owner(self._lock(k)) is not None
                  for k, s in self.waiting.items()):
            if left() == 0.0:
                raise subprocess.TimeoutExpired("another engine's build", timeout)
            time.sleep(0.2)

    def close(self) -> None:
        for key, (_, proc, _) in self.running.items():
            proc.kill()
            proc.wait()
            _release(self._lock(key), proc.pid)
        self.running.clear()
        self.waiting.clear()
        self.queued.clear()


def main(argv: list[str]) -> int:
    spec_file, out, parent = argv
    _follow_parent(int(parent))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        build(Spec.from_json(Path(spec_file).read_text()), Path(out))
    finally:  # done or failed: engines waiting for this package look at it now
        _release(Path(out).with_suffix(".lock"), os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
