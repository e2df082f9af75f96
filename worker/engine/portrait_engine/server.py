"""The process around the engine: reads requests, queues jobs, writes events.

The reading thread answers ping and cancel at once; train and generate jobs wait in arrival order and a worker
thread admits them into the scheduler (scheduler.py), up to `max_active` at once, which runs them together step by
step. Every request ends with exactly one result or error event.
"""

import json
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import TextIO

from pydantic import BaseModel, ValidationError

from .config import EngineConfig
from .engine import Engine
from .scheduler import TRAIN_SHARE, Scheduler
from .errors import Cancelled, EngineError
from .protocol import (
    REQUEST,
    CancelRequest,
    CancelResult,
    ErrorEvent,
    GenerateRequest,
    PingRequest,
    PreviewEvent,
    ProgressEvent,
    ReadyEvent,
    TrainRequest,
)

log = logging.getLogger(__name__)

MAX_PENDING = 32  # queued jobs beyond this are refused with "busy"
MAX_ACTIVE = 8  # jobs the scheduler runs at once (the rest wait in the queue)
UPGRADE_POLL_S = 2.0  # how often an idle engine looks for finished builds of compiled modules
TRAIN_PROGRESS_INTERVAL = 0.1  # seconds between training progress events (the last step is always reported)

JobRequest = TrainRequest | GenerateRequest


class Emitter:
    """Writes events, one JSON object per line, to the stream reserved for them."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        # Re-entrant so a caller can hold it to order several events against the worker's.
        self.lock = threading.RLock()

    def emit(self, event: BaseModel) -> None:
        line = event.model_dump_json() + "\n"
        with self.lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                # Nobody is reading any more; stdin will close too and end the process.
                log.warning("event dropped, stdout is closed: %s", line.strip())


class Job:
    """A queued or running job: its cancel flag and its progress reporting (the engine's JobContext)."""

    def __init__(self, request: JobRequest, emitter: Emitter):
        self.request = request
        self.cancelled = threading.Event()
        self._emitter = emitter
        self._interval = TRAIN_PROGRESS_INTERVAL if isinstance(request, TrainRequest) else 0.0
        self._last_progress = float("-inf")
        self._held: ProgressEvent | None = None  # the latest progress the interval held back

    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    def check_cancel(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()

    def progress(self, step: int, total: int, loss: float | None = None) -> None:
        now = time.monotonic()
        event = ProgressEvent(id=self.request.id, step=step, total=total, loss=loss)
        if step < total and now - self._last_progress < self._interval:
            self._held = event
            return
        self._last_progress, self._held = now, None
        self._emitter.emit(event)

    def preview(self, step: int, total: int, image: str) -> None:
        # A preview follows its step's progress (its loss), even one the interval held back.
        if self._held is not None and self._held.step == step:
            self._last_progress, held, self._held = time.monotonic(), self._held, None
            self._emitter.emit(held)
        self._emitter.emit(PreviewEvent(id=self.request.id, step=step, total=total, image=image))


class Terminated(BaseException):
    """Raised in the reading thread by SIGTERM; a BaseException so that no request handler swallows it."""


class Server:
    def __init__(
        self,
        engine: Engine,
        emitter: Emitter,
        max_pending: int = MAX_PENDING,
        max_active: int = MAX_ACTIVE,
        train_rows: int | None = None,
        peft_only: bool = False,
        train_buckets: bool = False,
        train_share: float = TRAIN_SHARE,
    ):
        self.engine = engine
        self.emitter = emitter
        self.max_pending = max_pending
        self.max_active = max_active
        self.scheduler = Scheduler(
            engine, emitter.emit, train_rows=train_rows, peft_only=peft_only, train_buckets=train_buckets,
            train_share=train_share,
        )
        self._pending: deque[Job] = deque()
        # Admitted jobs (in the scheduler, or waiting to run alone on the peft path): the worker's, mirrored here.
        self._admitted: list[Job] = []
        self._exclusive: deque[Job] = deque()
        self._closing = False
        self._changed = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="engine-worker")

    def serve(self, lines: Iterable[bytes]) -> None:
        """Handles request lines until they end (finishing queued work) or SIGTERM (cancelling it)."""
        self._worker.start()
        try:
            for line in lines:
                if line.strip():
                    self.handle_line(line)
            self._close(cancel=False)
        except (Terminated, KeyboardInterrupt):
            log.info("terminating: cancelling queued and running jobs")
            self._close(cancel=True)

    def handle_line(self, line: bytes | str) -> None:
        try:
            raw = json.loads(line)
        except ValueError as error:  # also undecodable bytes
            self.emitter.emit(ErrorEvent(id=None, code="bad_request", message=f"invalid JSON: {error}"))
            return
        request_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
        try:
            request = REQUEST.validate_python(raw)
        except ValidationError as error:
            self.emitter.emit(ErrorEvent(id=request_id, code="bad_request", message=describe(error)))
            return
        match request:
            case PingRequest():
                self.emitter.emit(self.engine.ping(request.id))
            case CancelRequest():
                self._cancel(request)
            case _:
                self._submit(request)

    def _submit(self, request: JobRequest) -> None:
        refusal = None
        with self._changed:
            if any(job.request.id == request.id for job in self._jobs()):
                refusal = ErrorEvent(
                    id=request.id, code="bad_request", message=f"request {request.id!r} is already in progress"
                )
            elif len(self._pending) >= self.max_pending:
                refusal = ErrorEvent(
                    id=request.id, code="busy", message=f"{len(self._pending)} jobs are already queued; retry later"
                )
            else:
                self._pending.append(Job(request, self.emitter))
                self._changed.notify()
        if refusal is not None:
            self.emitter.emit(refusal)

    def _cancel(self, request: CancelRequest) -> None:
        # Holding the emitter lock orders this cancel's result before the target's own "cancelled" error.
        with self.emitter.lock:
            with self._changed:
                job = next((job for job in self._jobs() if job.request.id == request.target), None)
                queued = job is not None and job in self._pending
                if queued:
                    self._pending.remove(job)
                elif job is not None:
                    job.cancelled.set()  # the scheduler drops it before its next step
            self.emitter.emit(CancelResult(id=request.id, cancelled=job is not None))
            if queued:
                self.emitter.emit(_error_event(job.request.id, Cancelled()))

    def _jobs(self) -> list[Job]:
        return [*self._pending, *self._admitted]

    def _work(self) -> None:
        while True:
            with self._changed:
                # While compiled modules build in other processes, an idle engine looks for them now and then.
                self._changed.wait_for(lambda: self._pending or self._admitted or self._closing,
                                       timeout=UPGRADE_POLL_S if self.engine.upgrading else None)
                idle = not (self._pending or self._admitted)
                if idle and self._closing:
                    return
                joining = []
                # A job waiting to run alone stops admissions, so the batched ones drain and it gets its turn.
                while self._pending and len(self._admitted) < self.max_active and not self._exclusive:
                    job = self._pending.popleft()
                    self._admitted.append(job)
                    joining.append(job)
            for i, job in enumerate(joining):
                status = self.scheduler.admit(job)
                if status == "exclusive":
                    self._exclusive.append(job)
                elif status == "full":  # no slot free: back to the queue's head, with those behind it
                    with self._changed:
                        for later in reversed(joining[i:]):
                            self._admitted.remove(later)
                            self._pending.appendleft(later)
                    break
            self.engine.upgrade()  # at a step boundary, outside the lock the request reader takes (a swap is ~0.4 s)
            if idle:
                continue
            if self.scheduler.idle and self._exclusive:
                job = self._exclusive.popleft()
                self.scheduler.run_exclusive(job)
            else:
                self.scheduler.tick()
            with self._changed:
                running = {id(job) for job in self.scheduler.jobs()} | {id(job) for job in self._exclusive}
                self._admitted = [job for job in self._admitted if id(job) in running]

    def _close(self, cancel: bool) -> None:
        with self.emitter.lock, self._changed:
            self._closing = True
            if cancel:
                for job in self._pending:
                    self.emitter.emit(_error_event(job.request.id, Cancelled()))
                self._pending.clear()
                for job in self._admitted:
                    job.cancelled.set()
            self._changed.notify()
        self._worker.join()


def _error_event(request_id: str, error: EngineError) -> ErrorEvent:
    return ErrorEvent(id=request_id, code=error.code, message=error.message)


def describe(error: ValidationError) -> str:
    """One readable clause per problem, e.g. "params.rank: Input should be greater than or equal to 1"."""
    problems = []
    for problem in error.errors(include_url=False):
        kind, context = problem["type"], problem.get("ctx", {})
        if kind == "union_tag_not_found":
            problems.append("missing field 'op'")
        elif kind == "union_tag_invalid":
            problems.append(f"unknown op {context['tag']!r}; expected one of {context['expected_tags']}")
        else:
            # A discriminated union puts the op's name first in the location; the field path after it is what helps.
            location = ".".join(str(part) for part in problem["loc"][1:])
            message = "unknown field" if kind == "extra_forbidden" else problem["msg"].removeprefix("Value error, ")
            problems.append(f"{location}: {message}" if location else message)
    return "; ".join(problems)


def run(config: EngineConfig, events: TextIO, stdin: Iterable[bytes]) -> int:
    """The engine process: load, announce readiness, serve until stdin closes. Returns the exit code."""
    emitter = Emitter(events)

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        engine = Engine(config)
    except EngineError as error:
        emitter.emit(ErrorEvent(id=None, code=error.code, message=error.message))
        return 1
    except Exception as error:
        log.exception("could not load the models")
        emitter.emit(ErrorEvent(id=None, code="internal", message=f"could not load the models: {error}"))
        return 1
    emitter.emit(ReadyEvent(profile=config.profile, device=str(config.device), info=engine.warmup))
    Server(
        engine,
        emitter,
        max_active=config.max_jobs,
        train_rows=config.train_rows or None,
        train_buckets=config.train_buckets,
        train_share=config.train_share,
        peft_only=config.lora_path == "peft",
    ).serve(stdin)
    return 0
