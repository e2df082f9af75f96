"""The scheduler inside the engine: every active job on the shared models, batched step by step.

Each `tick()` first drops cancelled jobs, then runs one denoising step over every active generation (latency first;
multigen.denoise_step batches them across users), then one optimizer step over every active LoRA training together
(multitrain.shared_step). While generations are active, trainings get at most `train_share` of the time (their
shared step is skipped on a tick that would take them past it), so a portrait beside several trainings takes about
1 / (1 - train_share) of its time on an idle engine; trainings never stop for longer than the generations last. Jobs join (`admit`) and leave between ticks, so a cancel takes effect within one step and
an `/imagine` never waits for anyone's whole training. A portrait decoded on one tick has its PNG files written on
the next, after the other portraits' step is launched, so the card computes that step while the host makes the
files (the last one is written at once); a cancel that comes before they are written wins. A job that fails (a bad photo or LoRA at admission, a loss
that is not finite, an exception in its own part of a step or in writing its output) ends with its own error; the
others go on.

Users' LoRAs live in slots (multilora.py): a training holds one for its whole job; a generation's LoRA file is
copied into a slot that stays cached (least recently used reused first) so the next request of that user finds it.
What the slots can't hold (full-UNet training, 8-bit Adam, a rank above the slots', a LoRA file the slot loader
can't read) and every job under `lora_path: peft` runs `exclusive`ly on the plain peft path
(Engine.train / Engine.generate, as before), once no batched job is active.
"""

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import torch
from pydantic import BaseModel

from . import fast_train
from .engine import Engine, checkpoint, encode_together, finish_generation, finish_training, resume
from .errors import Cancelled, EngineError
from .multigen import Generation, decode_together, denoise_step
from .multilora import NONE, SlotLoRA
from .multitrain import SlotTraining, shared_step, slot_trainable
from .previews import paint_in_slot, preview_steps
from .protocol import ErrorEvent, GenerateRequest, TrainRequest
from .safety import Screened
from .train import free_memory

log = logging.getLogger(__name__)

TRAIN_SHARE = 1 / 3  # of the engine's time for trainings while generations are active


class JobHandle(Protocol):
    """What the scheduler needs of a job (server.Job): its request, cancel flag and progress reporting."""

    request: TrainRequest | GenerateRequest

    def is_cancelled(self) -> bool: ...

    def check_cancel(self) -> None: ...

    def progress(self, step: int, total: int, loss: float | None = None) -> None: ...

    def preview(self, step: int, total: int, image: str) -> None: ...


class SlotTable:
    """Which slot holds what: trainings own theirs; LoRA files (by path, version and scale) stay cached, LRU."""

    def __init__(self, slots: SlotLoRA):
        self.slots = slots
        self._free = list(range(slots.slots))
        self._files: OrderedDict[tuple, int] = OrderedDict()  # (path, mtime, size, scale) -> slot
        self._pins: dict[int, int] = {}

    def take(self) -> int | None:
        """An empty slot for a training (evicting an unused cached file if need be), or None when all are busy."""
        if not self._free:
            victim = next((key for key, slot in self._files.items() if not self._pins.get(slot)), None)
            if victim is None:
                return None
            self._free.append(self._files.pop(victim))
        slot = self._free.pop(0)
        self._pins[slot] = 1
        return slot

    def give_back(self, slot: int) -> None:
        self.slots.clear_slot(slot)
        self._pins.pop(slot, None)
        self._free.append(slot)

    def file(self, path: str, scale: float) -> int | None:
        """The slot holding the LoRA file at `path` at `scale`, loaded if need be and pinned until `unpin`; None
        when every slot is busy. Raises EngineError (not_found), or whatever reading a file the slots can't hold
        raises."""
        try:
            stat = os.stat(path)
        except FileNotFoundError as error:
            raise EngineError("not_found", f"LoRA {path} does not exist") from error
        key = (path, stat.st_mtime_ns, stat.st_size, scale)
        slot = self._files.get(key)
        if slot is None:
            slot = self.take()
            if slot is None:
                return None
            try:
                self.slots.load_slot_file(slot, path, scale)
            except Exception:
                self.give_back(slot)
                raise
            self._pins[slot] = 0
            self._files[key] = slot
        self._files.move_to_end(key)
        self._pins[slot] = self._pins.get(slot, 0) + 1
        return slot

    def unpin(self, slot: int) -> None:
        self._pins[slot] -= 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Task:
    """An admitted job and what it holds."""

    def __init__(self, job: JobHandle):
        self.job, self.request = job, job.request
        self.started = time.monotonic()
        self.slot: int | None = None
        self.generation: Generation | None = None
        self.training: SlotTraining | None = None
        self.checkpoints = None
        self.resumed_from: int | None = None
        self.previews: list[int] = []  # the optimizer steps after which to paint one


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        emit: Callable[[BaseModel], None],
        train_rows: int | None = None,
        peft_only: bool = False,
        train_buckets: bool = False,
        train_share: float = TRAIN_SHARE,
    ):
        self.engine, self.emit = engine, emit
        self.train_rows, self.peft_only, self.train_buckets = train_rows, peft_only, train_buckets
        self.train_share = train_share
        # Seconds spent on each side since generations became active (both reset when none is).
        self._generating = self._training = 0.0
        self.table = SlotTable(engine.models.slots)
        self.active: list[Task] = []
        # Generations decoded on the last tick (with their images) whose files are not made yet: made and written on
        # this tick once the other generations' step is launched, so the card computes it meanwhile.
        self.finishing: list[tuple[Task, Screened]] = []
        # On CUDA with the fast path, the trainings fast_train accepts step together in captured graphs (at their
        # natural batch size, so a job's numbers move with its mates' by float rounding); the rest eagerly.
        cuda = engine.models.device.type == "cuda"
        self.cohort = fast_train.GraphedCohort(engine.models.slots) if engine.fast_training and cuda else None

    @property
    def idle(self) -> bool:
        return not self.active and not self.finishing

    def jobs(self) -> list[JobHandle]:
        """Every job the scheduler holds: active, or decoded with its files still to write."""
        return [t.job for t in self.active] + [t.job for t, _ in self.finishing]

    # --- joining --------------------------------------------------------------------------------------------------

    def admit(self, job: JobHandle) -> str:
        """Sets a job up to join at the next tick: "joined", "exclusive" (it must run alone on the peft path: call
        `run_exclusive` once idle), "full" (no slot free now: try again later) or "ended" (it failed; its error was
        emitted)."""
        task = Task(job)
        try:
            if self.peft_only:
                return "exclusive"
            if isinstance(task.request, TrainRequest):
                return self._admit_training(task)
            return self._admit_generation(task)
        except Exception as error:  # noqa: BLE001 (a job's failure is its own)
            self._release(task)
            self._fail(task, error)
            return "ended"

    def _admit_training(self, task: Task) -> str:
        params, photos, class_photos, checkpoints = self.engine.prepare_training(task.request)
        if not slot_trainable(params, self.table.slots):
            return "exclusive"
        task.slot = self.table.take()
        if task.slot is None:
            return "full"
        task.training = SlotTraining(self.engine.models, params, task.slot, photos, class_photos, self.train_rows)
        if self.cohort is not None:
            why = fast_train.refusal(params, self.engine.models.device, class_photos is not None)
            if why is None:
                fast_train.DeviceSide(task.training)  # before resume: the checkpoint loads into its optimizer
            else:
                log.info("training %s in eager shared steps: %s", task.request.id, why)
        task.checkpoints = checkpoints
        task.resumed_from = resume(task.training, checkpoints)
        task.previews = preview_steps(params.max_steps, task.request.previews)
        self.active.append(task)
        return "joined"

    def _admit_generation(self, task: Task) -> str:
        request = task.request
        seed, control = self.engine.generation_inputs(request)
        slot = NONE
        if request.lora is not None:
            try:
                slot = self.table.file(request.lora, request.lora_scale)
            except EngineError:
                raise
            except Exception as error:  # noqa: BLE001 (kohya keys, a rank above the slots', a damaged file, ...)
                # diffusers' own loader reads more formats, and says bad_request for what it can't read either.
                log.info("%s: %s; generating on the peft path", request.id, error)
                return "exclusive"
            if slot is None:
                return "full"
            task.slot = slot
        task.generation = Generation(self.engine.models, request, seed, control, slot, self.engine.fast)
        self.active.append(task)
        return "joined"

    def run_exclusive(self, job: JobHandle) -> None:
        """A job on the plain peft path, alone (the engine's serial methods check its cancel flag every step)."""
        task = Task(job)
        try:
            job.check_cancel()
            self._own_weights()
            if isinstance(task.request, TrainRequest):
                outcome = self.engine.train(task.request, job)
            else:
                outcome = self.engine.generate(task.request, job)
        except Exception as error:  # noqa: BLE001
            self._fail(task, error)
            return
        self._done(task, outcome)

    # --- one tick -------------------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Cancelled jobs leave; one denoising step for every generation, then one optimizer step for every training."""
        for task in [t for t in self.active if t.job.is_cancelled()]:
            self._end(task, error=Cancelled())
        generations = [t for t in self.active if t.generation is not None]
        if not generations:
            self._generating = self._training = 0.0
            self._write_finished()
        else:
            started = time.monotonic()
            self._generation_step(generations)
            if 0 < self.train_share < 1 and any(t.training is not None for t in self.active):
                _sync(self.engine.models.device)  # the share compares GPU time, not launch time (0 and 1 need none)
            self._generating += time.monotonic() - started
        trainings = [t for t in self.active if t.training is not None]
        if trainings and self._training_turn(bool(generations)):
            started = time.monotonic()
            self._training_step(trainings)
            if generations:
                self._training += time.monotonic() - started  # (the step's losses were read: it has synced)

    def _training_turn(self, generating: bool) -> bool:
        if not generating or self.train_share >= 1:
            return True
        return self.train_share > 0 and self._training <= self.train_share / (1 - self.train_share) * self._generating

    def _generation_step(self, generations: list[Task]) -> None:
        failures = denoise_step(self.engine.models, [t.generation for t in generations], self.engine.fast)
        self._write_finished()  # the last tick's, while the card computes this step (nothing here waits for it)
        finished = []
        for task in generations:
            generation = task.generation
            if generation in failures:
                self._end(task, error=failures[generation])
                continue
            task.job.progress(generation.step_index, generation.total)
            if generation.done:
                finished.append(task)
        # The requests done on this step are decoded together (one VAE call per latent size); their PNG files are
        # made and written on the next tick (_write_finished).
        decoded = decode_together([t.generation for t in finished])
        for task in finished:
            images = decoded[task.generation]
            if isinstance(images, Exception):
                self._end(task, error=images)
            else:
                self.active.remove(task)
                self.finishing.append((task, images))
        if not any(t.generation is not None for t in self.active):
            self._write_finished()  # no step to overlap with: now

    def _write_finished(self) -> None:
        """The PNG files of the generations decoded on the last tick, made together, then written."""
        finishing, self.finishing = self.finishing, []
        kept = []
        for task, images in finishing:
            if task.job.is_cancelled():  # a cancel wins until its files are made
                self._end(task, error=Cancelled())
            else:
                kept.append((task, images))
        if not kept:
            return
        try:
            encoded = encode_together([images for _, images in kept])
        except Exception:  # noqa: BLE001 (each request then encodes its own, and only a failing one fails)
            log.exception("encoding the finished requests' images together failed")
            encoded = [None] * len(kept)
        for (task, images), files in zip(kept, encoded):
            self._end(task, finish=lambda t=task, i=images, f=files: finish_generation(
                t.request, i, t.generation.seed, t.started, f))

    def _training_step(self, trainings: list[Task]) -> None:
        self._own_weights()
        # A job prepared for graphed steps (fast_train.DeviceSide) steps in the cohort; the others eagerly.
        graphed = [t.training for t in trainings if fast_train.device_side(t.training)]
        eager = [t.training for t in trainings if not fast_train.device_side(t.training)]
        outcome = shared_step(self.table.slots, eager, self.train_rows, self.train_buckets) if eager else {}
        if graphed:
            try:
                outcome |= self.cohort.step(graphed)
            except Exception as error:  # noqa: BLE001 (the step as a whole failed: each of its jobs fails with it)
                log.exception("the graphed training step failed")
                outcome |= {training: error for training in graphed}
        for task in trainings:
            training, result = task.training, outcome[task.training]
            if isinstance(result, BaseException):
                self._end(task, error=result)
                continue
            task.job.progress(training.step_count, training.params.max_steps, result)
            if training.step_count in task.previews:
                self._preview(task)
            try:
                checkpoint(training, task.checkpoints)
            except Exception as error:  # noqa: BLE001
                self._end(task, error=error)
                continue
            if training.step_count >= training.params.max_steps:
                self._end(task, finish=lambda t=task: finish_training(
                    t.request, t.training, t.checkpoints, t.started, t.resumed_from
                ))

    def _preview(self, task: Task) -> None:
        """Paints one preview in the job's slot, after the shared step: the others' steps are already taken."""
        training = task.training
        image = paint_in_slot(self.engine.models, self.engine.fast, task.request, training.params, task.slot,
                              training.step_count)
        if image is not None:
            task.job.preview(training.step_count, training.params.max_steps, image)

    def cancel_all(self) -> None:
        self._write_finished()  # decoded already: their results stand
        for task in list(self.active):
            self._end(task, error=Cancelled())

    # --- leaving --------------------------------------------------------------------------------------------------

    def _end(self, task: Task, finish: Callable[[], BaseModel] | None = None, error: BaseException | None = None):
        """Takes the task out; writes its outputs (`finish`) or reports `error`; gives its slot back."""
        if task in self.active:  # (a finishing one has left already)
            self.active.remove(task)
        self._own_weights()  # before its slot may be given back or loaded again
        outcome = None
        if finish is not None:
            try:
                outcome = finish()
            except Exception as failure:  # noqa: BLE001
                error = failure
        self._release(task)
        if error is not None:
            self._fail(task, error)
        else:
            self._done(task, outcome)

    def _own_weights(self) -> None:
        """The UNet's own weights, for what comes next: the fast path leaves a one-image request's LoRA merged into
        them from one step to the next (FastGenerator.settle)."""
        if self.engine.fast is not None:
            self.engine.fast.settle()

    def _release(self, task: Task) -> None:
        if task.slot is None:
            return
        if task.training is not None or (task.generation is None and isinstance(task.request, TrainRequest)):
            if self.cohort is not None and task.training is not None:
                self.cohort.forget(task.training)
            self.table.give_back(task.slot)
            task.training = None
            free_memory(self.engine.models.device)
        else:
            self.table.unpin(task.slot)
        task.slot = None

    def _done(self, task: Task, outcome: BaseModel) -> None:
        log.info("%s %s: done in %.2f s", task.request.op, task.request.id, outcome.seconds)
        self.emit(outcome)

    def _fail(self, task: Task, error: BaseException) -> None:
        request = task.request
        if isinstance(error, EngineError):
            log.info("%s %s: %s: %s", request.op, request.id, error.code, error.message)
            self.emit(ErrorEvent(id=request.id, code=error.code, message=error.message))
        else:
            log.error("%s %s: failed", request.op, request.id, exc_info=error)
            self.emit(ErrorEvent(id=request.id, code="internal", message=f"{type(error).__name__}: {error}"))
