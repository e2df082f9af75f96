"""LoRA optimizer steps captured in CUDA graphs: latent sampling from the cached photo statistics, noise and timesteps
from each job's own CUDA generator, forward and backward under autocast (its weight cache off, as capture needs), fp16
loss scaling kept on the device, gradient clipping and a fused, capturable AdamW.

- `GraphedStep` drives one `Training` (the peft path, a job alone): it computes Training.step()'s step.
- `GraphedCohort` drives several `SlotTraining`s at once: it computes multitrain.shared_step's step (the same
  `_forward` over the slot layers, each job's gradient from its own rows) for a fixed set of jobs, one graph per set
  and window shapes, captured when the set first steps; a set's graphs are dropped once a job joins or leaves.

`GraphedStep` takes the jobs `refusal` accepts: LoRA or full-UNet, without a trained text encoder, prior
preservation, min-SNR or 8-bit Adam (the slot path, GraphedCohort, takes LoRA jobs only: scheduler.py).
`DeviceSide(training)` moves a job's optimizer, LR schedule and loss scaler to the device before capture; checkpoints
keep their format (the scaler's state reads as torch.amp.GradScaler's), so a job resumes on either path.
Each distinct window shape (micro-batch sizes of one step: an epoch's last window may be short) gets its own graph.
"""

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

from .errors import EngineError
from .multitrain import _forward
from .protocol import TrainParams
from .train import ADAM, MAX_GRAD_NORM, Training

log = logging.getLogger(__name__)

WARMUP_STEPS = 2  # eager steps on a side stream before capture (then undone), as torch.cuda.graph requires
GROWTH, BACKOFF, INTERVAL = 2.0, 0.5, 2000  # torch.amp.GradScaler's defaults
COHORT_GRAPHS = 2  # graphs kept for the current set of jobs (by window shapes), least recently used dropped first


def refusal(params: TrainParams, device: torch.device, has_class_photos: bool) -> str | None:
    """Why a job must train eagerly, or None when a graphed step serves it."""
    if device.type != "cuda":
        return "no CUDA"
    for reason, refused in (
        ("text-encoder training", params.train_text_encoder),
        ("prior preservation", has_class_photos),
        ("min-SNR weighting", params.snr_gamma is not None),
        ("8-bit Adam", params.use_8bit_adam),
    ):
        if refused:
            return reason
    return None


class DeviceSide:
    """A Training's optimizer (fused AdamW, capturable on CUDA, its lr a tensor the LR schedule moves without
    recapture), LR schedule and loss scaler (scale, growth tracker, found-inf flag as device tensors) replacing its
    own, so that a captured step needs no host value. It stands in as `training.scaler`: `scale()`, `state_dict()`
    and `load_state_dict()` in GradScaler's terms, so Training.scaled(), checkpoints and resume work unchanged.
    Built before a checkpoint is loaded into the training."""

    def __init__(self, training: Training):
        self.t = training
        params, device = training.params, training.device
        self.lr = torch.tensor(params.learning_rate, device=device)
        training.optimizer = torch.optim.AdamW(
            training.trainable, lr=self.lr, fused=True, capturable=device.type == "cuda", **ADAM
        )
        from diffusers.optimization import get_scheduler

        training.lr_scheduler = get_scheduler(
            params.lr_scheduler, optimizer=training.optimizer,
            num_warmup_steps=params.lr_warmup_steps, num_training_steps=params.max_steps,
        )
        self.enabled = params.mixed_precision == "fp16"
        # 0-dim, as GradScaler keeps them (the fused kernel and _amp_update_scale_ expect that shape).
        self.scale_tensor = torch.full((), 2.0**16 if self.enabled else 1.0, device=device)
        self.growth_tracker = torch.zeros((), device=device, dtype=torch.int32)
        self.found_inf = torch.zeros((), device=device)
        training.optimizer.found_inf = self.found_inf  # the fused kernel skips the update when it is set
        training.scaler = self
        training.autocast_cache = False

    # GradScaler's face, for Training.scaled() and checkpoints.
    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_tensor if self.enabled else loss

    def is_enabled(self) -> bool:
        return self.enabled

    def state_dict(self) -> dict:
        if not self.enabled:
            return {}
        return {"scale": self.scale_tensor.item(), "growth_factor": GROWTH, "backoff_factor": BACKOFF,
                "growth_interval": INTERVAL, "_growth_tracker": int(self.growth_tracker.item())}

    def load_state_dict(self, state: dict) -> None:
        self.scale_tensor.fill_(state["scale"])
        self.growth_tracker.fill_(state["_growth_tracker"])

    # The captured part.
    def optimizer_step(self) -> torch.Tensor:
        """Unscale (flagging inf/NaN gradients), clip, step (skipped when flagged), update the scale; returns the
        flag. Gradients must be in."""
        t = self.t
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in t.trainable]
        self.found_inf.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found_inf, self.scale_tensor.reciprocal())
        torch.nn.utils.clip_grad_norm_(t.trainable, MAX_GRAD_NORM, foreach=True)
        t.optimizer.step()
        if self.enabled:
            torch._amp_update_scale_(self.scale_tensor, self.growth_tracker, self.found_inf, GROWTH, BACKOFF, INTERVAL)
        return self.found_inf

    # Around a capture: the warm-up steps are real; everything they change is put back.
    def snapshot(self) -> tuple:
        t = self.t
        state = {id(p): {k: v.clone() for k, v in t.optimizer.state[p].items()} for p in t.trainable
                 if p in t.optimizer.state}
        return ([p.detach().clone() for p in t.trainable], state, self.scale_tensor.clone(),
                self.growth_tracker.clone(), t.random.on_device.get_state())

    @torch.no_grad()
    def restore(self, snapshot: tuple) -> None:
        t = self.t
        weights, state, scale, tracker, random_state = snapshot
        for p, w in zip(t.trainable, weights):
            p.copy_(w)
        for p in t.trainable:
            for key, value in t.optimizer.state.get(p, {}).items():
                if id(p) in state:
                    value.copy_(state[id(p)][key])
                else:
                    value.zero_()  # state the warm-up created: zero is a fresh optimizer's
        self.scale_tensor.copy_(scale)
        self.growth_tracker.copy_(tracker)
        t.random.on_device.set_state(random_state)

    # After a replay.
    def finish(self, loss: float, skipped: float) -> float:
        """Training.finish_step's host side once the step ran: the LR schedule (left alone on a skipped step, as
        accelerate does), the divergence check, the step count and loss history."""
        t = self.t
        if not skipped:
            t.lr_scheduler.step()
        if not math.isfinite(loss):
            raise EngineError("internal", f"training diverged (loss {loss}); try a lower learning_rate")
        t.step_count += 1
        t.losses.append(loss)
        return loss


def device_side(training: Training) -> DeviceSide | None:
    """The job's DeviceSide when it was prepared for graphed steps (it stands in as its scaler), else None."""
    return training.scaler if isinstance(training.scaler, DeviceSide) else None


def _stage(buffers: Sequence[torch.Tensor], batches: Sequence[Sequence[int]]) -> None:
    """Copies each micro-batch's dataset positions into its graph input buffer: one host-to-device copy for all."""
    staged = torch.tensor([i for batch in batches for i in batch], dtype=torch.long).to(buffers[0].device)
    for buffer, part in zip(buffers, staged.split([len(batch) for batch in batches])):
        buffer.copy_(part)


def capture(sides: Sequence[DeviceSide], body: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """`body` (the jobs' whole step) captured in a CUDA graph after WARMUP_STEPS eager runs, which are undone. Each
    graph gets a private memory pool: its gradients live in its own memory."""
    device = sides[0].t.device
    snapshots = [side.snapshot() for side in sides]
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    try:
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                body()
    finally:
        torch.cuda.current_stream(device).wait_stream(stream)
        for side, snapshot in zip(sides, snapshots):
            side.restore(snapshot)
    graph = torch.cuda.CUDAGraph()
    for side in sides:
        graph.register_generator_state(side.t.random.on_device)
    with torch.cuda.graph(graph):
        out = body()
    torch.cuda.synchronize(device)
    return graph, out


class GraphedStep:
    """Drives a Training through captured graphs: `step()` has Training.step()'s contract (windows, losses,
    step_count, LR schedule, divergence check)."""

    def __init__(self, training: Training):
        self.t = training
        self.side = device_side(training) or DeviceSide(training)
        self.graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}
        self.capture_seconds = 0.0

    def _body(self, indices: list[torch.Tensor]) -> torch.Tensor:
        t = self.t
        t.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=t.device)
        for index in indices:
            loss = t.loss(*t.draw(index)[:3])
            t.scaled(loss).backward()
            total = total + loss.detach()
        return torch.stack([total / len(indices), self.side.optimizer_step()])

    def step(self) -> float:
        t = self.t
        window = t.windows.next()
        shape = tuple(len(batch) for batch in window)
        if shape not in self.graphs:
            started = time.monotonic()
            indices = [torch.zeros(size, device=t.device, dtype=torch.long) for size in shape]
            self.graphs[shape] = (*capture([self.side], lambda: self._body(indices)), indices)
            self.capture_seconds += time.monotonic() - started
            log.info("captured the training step for window %s in %.1f s", shape, time.monotonic() - started)
        graph, out, indices = self.graphs[shape]
        _stage(indices, window)
        graph.replay()
        loss, skipped = out.tolist()  # the one sync per step: progress needs the loss
        return self.side.finish(loss, skipped)


class GraphedCohort:
    """multitrain.shared_step for sets of slot jobs (each prepared with DeviceSide), one captured graph per set of
    jobs and their window shapes. `step(trainings)` returns each job's mean loss or the error that failed it; on a
    CPU (no capture) it runs the same body eagerly, which is what the CPU tests compare with shared_step."""

    def __init__(self, slots, rows: int | None = None):
        self.slots, self.rows = slots, rows
        # (jobs, window shapes) -> (graph or None, output, index buffers)
        self.graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self.capture_seconds = 0.0
        self.eager = False  # set when a capture failed: the same body then runs without graphs

    def forget(self, training) -> None:
        """Drops the graphs `training` is in (it has left), with their memory."""
        for key in [key for key in self.graphs if training in key[0]]:
            del self.graphs[key]

    def _body(self, trainings: Sequence, buffers: list[list[torch.Tensor]]) -> torch.Tensor:
        for training in trainings:
            training.optimizer.zero_grad(set_to_none=True)
        totals = [torch.zeros((), device=t.device) for t in trainings]
        # Every micro-batch of the step in one call per latent size: accumulation is a sum of the micro-batches'
        # (accumulation-divided) losses either way, and one batch of 2k rows runs faster than k of 2.
        groups: dict[tuple, list[tuple[int, int]]] = {}
        for j, training in enumerate(trainings):
            for k in range(len(buffers[j])):  # each job's draws in its own order
                groups.setdefault((training.params.resolution, training.autocast_dtype), []).append((j, k))
        for members in groups.values():
            inputs = [trainings[j].draw(buffers[j][k]) for j, k in members]
            total, values = _forward(self.slots, [trainings[j] for j, _ in members], inputs, self.rows)
            total.backward()
            for (j, _), value in zip(members, values):
                totals[j] = totals[j] + value.detach()
        return torch.stack([
            torch.stack([totals[j] / len(buffers[j]), t.scaler.optimizer_step()]) for j, t in enumerate(trainings)
        ])

    def step(self, trainings: Sequence) -> dict:
        trainings = list(trainings)
        for key in [key for key in self.graphs if key[0] != tuple(trainings)]:
            del self.graphs[key]  # the set changed (a job joined or left): its graphs go, and their memory with them
        windows = [t.windows.next() for t in trainings]
        key = (tuple(trainings), tuple(tuple(len(batch) for batch in w) for w in windows))
        entry = self.graphs.get(key)
        if entry is None:
            device = trainings[0].device
            buffers = [[torch.zeros(len(batch), device=device, dtype=torch.long) for batch in w] for w in windows]
            graph = out = None
            if device.type == "cuda" and not self.eager:
                started = time.monotonic()
                try:
                    graph, out = capture([t.scaler for t in trainings], lambda: self._body(trainings, buffers))
                    log.info("captured the shared training step of %d jobs in %.1f s", len(trainings),
                             time.monotonic() - started)
                except Exception:  # noqa: BLE001 (the jobs still train, eagerly)
                    log.exception("capturing the shared training step failed; it runs eagerly from now on")
                    self.eager = True
                self.capture_seconds += time.monotonic() - started
            entry = self.graphs[key] = (graph, out, buffers)
            while len(self.graphs) > COHORT_GRAPHS:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        graph, out, buffers = entry
        _stage([b for per_job in buffers for b in per_job], [batch for w in windows for batch in w])
        if graph is None:
            out = self._body(trainings, buffers)
        else:
            graph.replay()
        outcome: dict = {}
        for training, (loss, skipped) in zip(trainings, out.tolist()):  # one sync for every job's loss
            try:
                outcome[training] = training.scaler.finish(loss, skipped)
            except Exception as error:  # noqa: BLE001 (a job that diverged fails alone)
                outcome[training] = error
        return outcome
