"""The scheduler through the real request loop, in-process: jobs joining and leaving, generation priority, cancel
within a step, failures kept to their job, per-job progress, the job limit."""

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
from PIL import Image

from portrait_engine.engine import Engine
from portrait_engine.errors import Cancelled
from portrait_engine.protocol import TrainRequest
from portrait_engine.server import Emitter, Server

from .support import RecordingJob, ScheduledJob, assert_same_images

TIMEOUT = 300
ROWS = 8


class Events:
    """A stream the emitter writes to: every line parsed, with its arrival time; waiting for one is possible."""

    def __init__(self):
        self.events: list[dict] = []
        self._changed = threading.Condition()

    def write(self, line: str) -> None:
        event = json.loads(line)
        event["_at"] = time.monotonic()
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def flush(self) -> None:
        pass

    def wait_for(self, matches: Callable[[dict], bool]) -> dict:
        with self._changed:
            found = lambda: next((e for e in self.events if matches(e)), None)  # noqa: E731
            assert self._changed.wait_for(lambda: found() is not None, timeout=TIMEOUT), self.events
            return found()

    def outcome(self, request_id: str) -> dict:
        return self.wait_for(lambda e: e["id"] == request_id and e["event"] in ("result", "error"))

    def progress(self, request_id: str) -> list[dict]:
        with self._changed:
            return [e for e in self.events if e["id"] == request_id and e["event"] == "progress"]

    def position(self, event: dict) -> int:
        with self._changed:
            return next(i for i, e in enumerate(self.events) if e is event)


class Running:
    """A Server serving lines pushed from the test, on its own thread (as the process's main thread does)."""

    def __init__(self, engine: Engine, **options):
        self.events = Events()
        self.server = Server(engine, Emitter(self.events), train_rows=ROWS, **options)
        self._lines: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self.server.serve, args=(self._iterate(),))
        self._thread.start()

    def _iterate(self) -> Iterator[bytes]:
        while (line := self._lines.get()) is not None:
            yield line

    def send(self, message: dict) -> None:
        self._lines.put(json.dumps(message).encode())

    def close(self) -> None:
        self._lines.put(None)
        self._thread.join(timeout=TIMEOUT)
        assert not self._thread.is_alive()


@pytest.fixture
def running(engine: Engine):
    servers = []

    def start(**options) -> Running:
        servers.append(Running(engine, **options))
        return servers[-1]

    yield start
    for server in servers:
        if server._thread.is_alive():
            server.server._close(cancel=True)


def _train(request_id: str, photos, output: Path, **params) -> dict:
    params = {"resolution": 64, "learning_rate": 1e-2, **params}
    return {"id": request_id, "op": "train", "photos": photos, "output": str(output), "params": params}


def _generate(request_id: str, output_dir: Path, **fields) -> dict:
    return {"id": request_id, "op": "generate", "prompt": "sks person", "steps": 3, "width": 96, "height": 64,
            "seed": 1, "output_dir": str(output_dir), **fields}


def _same_file(a: Path, b: Path, tolerance: float = 1e-5) -> None:
    x, y = safetensors.torch.load_file(a), safetensors.torch.load_file(b)
    assert x.keys() == y.keys()
    for key in x:
        assert ((x[key] - y[key]).norm() / y[key].norm()).item() <= tolerance, key


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _steps(events: list[dict]) -> list[int]:
    return [e["step"] for e in events]


def test_jobs_join_and_leave_and_each_trains_as_it_would_alone(running, photos, tmp_path: Path):
    first = dict(max_steps=12, seed=1)
    second = dict(max_steps=3, rank=2, alpha=4.0, seed=2, learning_rate=3e-2)

    alone = running()
    alone.send(_train("a1", photos, tmp_path / "alone1.safetensors", **first))
    assert alone.events.outcome("a1")["event"] == "result"
    alone.send(_train("a2", photos, tmp_path / "alone2.safetensors", **second))
    assert alone.events.outcome("a2")["event"] == "result"
    alone.close()

    shared = running()
    shared.send(_train("t1", photos, tmp_path / "t1.safetensors", **first))
    shared.events.wait_for(lambda e: e["id"] == "t1" and e["event"] == "progress" and e["step"] >= 2)
    shared.send(_train("t2", photos, tmp_path / "t2.safetensors", **second))
    t2, t1 = shared.events.outcome("t2"), shared.events.outcome("t1")
    shared.close()

    assert t1["event"] == t2["event"] == "result"
    # t2 joined late, trained alongside t1 and left first; t1 went on after it.
    t1_progress, t2_progress = shared.events.progress("t1"), shared.events.progress("t2")
    assert _steps(t2_progress)[-1] == 3 and _steps(t1_progress)[-1] == 12
    assert t1_progress[0]["_at"] < t2_progress[0]["_at"] and shared.events.position(t2) < shared.events.position(t1)
    # Each user's adapter is what it is trained alone.
    _same_file(tmp_path / "t1.safetensors", tmp_path / "alone1.safetensors")
    _same_file(tmp_path / "t2.safetensors", tmp_path / "alone2.safetensors")
    assert t1["losses"] == pytest.approx(alone.events.outcome("a1")["losses"], rel=1e-5)


def test_a_generation_finishes_long_before_the_trainings_it_joins(running, photos, tmp_path: Path):
    server = running()
    for name in ("t1", "t2"):
        server.send(_train(name, photos, tmp_path / f"{name}.safetensors", max_steps=60))
    for name in ("t1", "t2"):
        server.events.wait_for(lambda e, n=name: e["id"] == n and e["event"] == "progress")
    server.send(_generate("g", tmp_path / "g"))
    generated = server.events.outcome("g")
    steps_then = {name: _steps(server.events.progress(name))[-1] for name in ("t1", "t2")}
    ends = [server.events.outcome(name) for name in ("t1", "t2")]
    server.close()

    assert generated["event"] == "result" and (tmp_path / "g" / "0.png").is_file()
    assert all(server.events.position(generated) < server.events.position(end) for end in ends)
    # Its 3 steps took 3 ticks: the trainings were a few steps further, nowhere near their end.
    assert all(step < 30 for step in steps_then.values()), steps_then
    assert [e["step"] for e in server.events.progress("g")] == [1, 2, 3]
    assert all(end["event"] == "result" and end["steps"] == 60 for end in ends)


def test_cancel_takes_effect_within_one_step(running, photos, tmp_path: Path):
    server = running()
    server.send(_train("t1", photos, tmp_path / "t1.safetensors", max_steps=5000))
    server.send(_train("t2", photos, tmp_path / "t2.safetensors", max_steps=4))
    server.send(_generate("g", tmp_path / "g", steps=100, width=512, height=512))
    server.events.wait_for(lambda e: e["id"] == "t1" and e["event"] == "progress" and e["step"] >= 2)
    server.events.wait_for(lambda e: e["id"] == "g" and e["event"] == "progress")
    server.send({"id": "cg", "op": "cancel", "target": "g"})
    server.send({"id": "c", "op": "cancel", "target": "t1"})
    answer, ended = server.events.outcome("c"), server.events.outcome("t1")
    generation_answer, generation_ended = server.events.outcome("cg"), server.events.outcome("g")
    generation_after = [e for e in server.events.progress("g") if e["_at"] > generation_answer["_at"]]
    last = _steps(server.events.progress("t1"))[-1]
    after = [e for e in server.events.progress("t1") if e["_at"] > answer["_at"]]
    t2 = server.events.outcome("t2")
    server.close()

    assert answer["cancelled"] is True and (ended["event"], ended["code"]) == ("error", "cancelled")
    assert server.events.position(answer) < server.events.position(ended)
    assert len(after) <= 1 and last < 5000  # at most the step that was running when the cancel arrived
    assert not (tmp_path / "t1.safetensors").exists()
    assert t2["event"] == "result" and t2["steps"] == 4  # the other job was not disturbed
    assert generation_answer["cancelled"] is True and generation_ended["code"] == "cancelled"
    assert len(generation_after) <= 1 and _steps(server.events.progress("g"))[-1] < 100
    assert not (tmp_path / "g").exists()


def test_a_failing_job_fails_alone(running, photos, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    blocker.with_name("damaged.safetensors").write_bytes(b"\x10not a safetensors file")
    reference = running()
    reference.send(_train("ref", photos, tmp_path / "ref.safetensors", max_steps=4))
    reference.send(_generate("gref", tmp_path / "gref"))
    assert reference.events.outcome("ref")["event"] == reference.events.outcome("gref")["event"] == "result"
    reference.close()

    server = running()
    server.send(_train("good", photos, tmp_path / "good.safetensors", max_steps=4))
    server.send(_train("no-photo", [photos[0], str(tmp_path / "missing.png")], tmp_path / "x.safetensors"))
    server.send(_train("cannot-save", photos, blocker / "x.safetensors", max_steps=2))
    server.send(_generate("no-lora", tmp_path / "n", lora=str(tmp_path / "missing.safetensors")))
    server.send(_generate("cannot-write", blocker / "images"))
    server.send(_generate("bad-lora", tmp_path / "b", lora=str(blocker.with_name("damaged.safetensors"))))
    server.send(_generate("gen", tmp_path / "gen"))
    outcomes = {name: server.events.outcome(name) for name in
                ("good", "no-photo", "cannot-save", "no-lora", "cannot-write", "bad-lora", "gen")}
    server.close()

    assert outcomes["no-photo"]["code"] == "not_found" and outcomes["no-lora"]["code"] == "not_found"
    assert outcomes["cannot-save"]["code"] == "internal" and outcomes["cannot-write"]["code"] == "internal"
    assert outcomes["bad-lora"]["code"] == "bad_request"  # refused by the peft path's loader, as before
    assert outcomes["good"]["event"] == outcomes["gen"]["event"] == "result"
    _same_file(tmp_path / "good.safetensors", tmp_path / "ref.safetensors")
    # Painted beside other requests, the same picture as alone (up to CPU kernels' rounding by batch size).
    assert_same_images(_pixels(tmp_path / "gen" / "0.png"), _pixels(tmp_path / "gref" / "0.png"))


def test_the_job_limit_queues_the_rest_until_one_leaves(running, photos, tmp_path: Path):
    server = running(max_active=2)
    for name, steps in (("t1", 3), ("t2", 8), ("t3", 3)):
        server.send(_train(name, photos, tmp_path / f"{name}.safetensors", max_steps=steps))
    outcomes = {name: server.events.outcome(name) for name in ("t1", "t2", "t3")}
    server.close()

    assert all(outcome["event"] == "result" for outcome in outcomes.values())
    # t3 only started once t1 had left.
    assert server.events.progress("t3")[0]["_at"] > outcomes["t1"]["_at"]
    assert _steps(server.events.progress("t3"))[-1] == 3


def test_what_the_slots_cannot_hold_runs_alone_on_the_peft_path(running, photos, tmp_path: Path):
    server = running()
    server.send(_train("slots", photos, tmp_path / "slots.safetensors", max_steps=4))
    server.send(_train("text", photos, tmp_path / "text.safetensors", max_steps=2, use_8bit_adam=True))
    server.send(_generate("after", tmp_path / "after"))
    outcomes = {name: server.events.outcome(name) for name in ("slots", "text", "after")}
    server.close()
    assert all(outcome["event"] == "result" for outcome in outcomes.values()), outcomes
    text_progress = server.events.progress("text")
    # It ran alone: once the batched jobs had left.
    assert text_progress[0]["_at"] > max(outcomes["slots"]["_at"], outcomes["after"]["_at"])

    peft = running(peft_only=True)  # the configured plain diffusers path: the same requests, one at a time
    peft.send(_train("p", photos, tmp_path / "p.safetensors", max_steps=4))
    peft.send(_generate("pg", tmp_path / "pg"))
    assert peft.events.outcome("p")["event"] == peft.events.outcome("pg")["event"] == "result"
    peft.close()
    assert peft.events.progress("pg")[0]["_at"] > peft.events.outcome("p")["_at"]
    # (The slot path steps UniPC by its maps read from diffusers: the same picture up to float rounding.)
    assert_same_images(_pixels(tmp_path / "pg" / "0.png"), _pixels(tmp_path / "after" / "0.png"))


def test_a_cancelled_training_resumes_from_its_checkpoint_with_the_uninterrupted_result(
    running, engine: Engine, photos, tmp_path
):
    server = running()
    server.send(_train("whole", photos, tmp_path / "whole.safetensors", max_steps=6, checkpoint_steps=2))
    assert server.events.outcome("whole")["event"] == "result"
    server.close()

    interrupted = running()
    request = _train("part", photos, tmp_path / "part.safetensors", max_steps=6, checkpoint_steps=2)
    interrupted.send(request)
    interrupted.events.wait_for(lambda e: e["id"] == "part" and e["event"] == "progress" and e["step"] >= 3)
    interrupted.send({"id": "c", "op": "cancel", "target": "part"})
    assert interrupted.events.outcome("part")["code"] == "cancelled"
    assert any((tmp_path / "part.checkpoints").iterdir())
    request["id"] = "again"
    interrupted.send(request)
    again = interrupted.events.outcome("again")
    interrupted.close()

    assert again["event"] == "result" and again["resumed_from"] in (2, 4)
    assert again["losses"] == pytest.approx(server.events.outcome("whole")["losses"], rel=1e-5)
    _same_file(tmp_path / "part.safetensors", tmp_path / "whole.safetensors")
    assert not (tmp_path / "part.checkpoints").exists()

    # A checkpoint of the plain peft path (an older engine, or lora_path=peft) resumes here too.
    peft_request = TrainRequest.model_validate(_train("peft", photos, tmp_path / "peft.safetensors", max_steps=6,
                                                      checkpoint_steps=2))
    with pytest.raises(Cancelled):
        engine.train(peft_request, RecordingJob(cancel_at=3))
    resumed = running()
    resumed.send(_train("slots", photos, tmp_path / "peft.safetensors", max_steps=6, checkpoint_steps=2))
    outcome = resumed.events.outcome("slots")
    resumed.close()
    assert outcome["event"] == "result" and outcome["resumed_from"] == 2
    # Two steps on the other path: the float-rounding bound of test_multitrain's peft comparison.
    _same_file(tmp_path / "peft.safetensors", tmp_path / "whole.safetensors", tolerance=5e-3)


def test_trainings_take_at_most_their_share_while_portraits_are_painted(engine: Engine, photos, tmp_path: Path):
    """Share 0: a training waits while a portrait is painted and goes on after it; share 1: a step every tick."""
    from portrait_engine.protocol import GenerateRequest
    from portrait_engine.scheduler import Scheduler

    for share, steps_while_painting in ((0.0, 0), (1.0, 6)):
        ended = []
        scheduler = Scheduler(engine, ended.append, train_rows=ROWS, train_share=share)
        training = TrainRequest.model_validate(_train("t", photos, tmp_path / f"t{share}.safetensors", max_steps=20))
        assert scheduler.admit(ScheduledJob(training)) == "joined"
        scheduler.tick()
        task = scheduler.active[0]
        before = task.training.step_count
        portrait = GenerateRequest.model_validate(_generate("g", tmp_path / f"g{share}", steps=6))
        assert scheduler.admit(ScheduledJob(portrait)) == "joined"
        while any(t.generation is not None for t in scheduler.active):
            scheduler.tick()
        assert task.training.step_count - before == steps_while_painting
        while not scheduler.idle:
            scheduler.tick()
        assert [type(e).__name__ for e in ended] == ["GenerateResult", "TrainResult"], ended


class CancellableJob(ScheduledJob):
    def __init__(self, request):
        super().__init__(request)
        self.cancelled = False

    def is_cancelled(self) -> bool:
        return self.cancelled


def test_a_finished_portrait_is_written_once_the_others_next_step_is_launched(engine: Engine, tmp_path: Path,
                                                                             monkeypatch):
    """A portrait decoded on one tick has its PNG files made on the next, after the other portraits' step is launched
    (on CUDA the card computes that step meanwhile: nothing between waits for it); the last one is written at once;
    a cancel that comes before the files are written wins, and none are."""
    from portrait_engine import scheduler as module
    from portrait_engine.protocol import GenerateRequest

    order = []
    step, finish = module.denoise_step, module.finish_generation
    monkeypatch.setattr(module, "denoise_step", lambda models, generations, fast=None: order.append(
        ("step", sorted(g.request.id for g in generations))) or step(models, generations, fast))
    monkeypatch.setattr(module, "finish_generation", lambda request, *rest: order.append(("write", request.id))
                        or finish(request, *rest))
    encode = module.encode_together
    monkeypatch.setattr(module, "encode_together", lambda outputs: order.append(("encode", len(outputs)))
                        or encode(outputs))
    for cancel in (False, True):
        order.clear()
        ended = []
        scheduler = module.Scheduler(engine, ended.append, train_rows=ROWS)
        jobs = {name: CancellableJob(GenerateRequest.model_validate(_generate(name, tmp_path / f"{name}{cancel}",
                                                                              steps=steps)))
                for name, steps in (("a", 2), ("b", 4))}
        for job in jobs.values():
            assert scheduler.admit(job) == "joined"
        scheduler.tick()
        scheduler.tick()  # a's last step: decoded, its files not written yet
        assert [job.request.id for job in scheduler.jobs()] == ["b", "a"] and not scheduler.idle
        jobs["a"].cancelled = cancel
        while not scheduler.idle:
            scheduler.tick()
        written = [] if cancel else [("encode", 1), ("write", "a")]
        assert order == [("step", ["a", "b"]), ("step", ["a", "b"]), ("step", ["b"]), *written, ("step", ["b"]),
                         ("encode", 1), ("write", "b")]
        assert [(e.id, type(e).__name__) for e in ended] == [("a", "ErrorEvent" if cancel else "GenerateResult"),
                                                            ("b", "GenerateResult")]
        assert (ended[0].code == "cancelled") if cancel else Path(ended[0].images[0]).is_file()
        assert not (tmp_path / "aTrue").exists() or not any((tmp_path / "aTrue").iterdir())
