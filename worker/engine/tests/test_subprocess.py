"""End to end through the real process: `python -m portrait_engine --profile tiny`, JSON lines over its pipes."""

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from portrait_engine.protocol import EVENT

from .support import ENGINE_DIR, FIXTURES

TIMEOUT = 120  # seconds; generous for a loaded 2-core CI machine
LONG_TRAIN = dict(max_steps=5000, resolution=64)  # runs for minutes unless cancelled

Event = dict


class EngineProcess:
    def __init__(self, cache_dir: Path, log: Path, *args: str):
        env = {**os.environ, "ENGINE_CACHE_DIR": str(cache_dir), "ENGINE_DEVICE": "cpu"}
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "portrait_engine", "--profile", "tiny", *args],
            cwd=ENGINE_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self.events: list[Event] = []
        self._arrived = threading.Condition()
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            # Every stdout line must be one protocol event; anything else fails the test that waits on it.
            event = json.loads(line)
            EVENT.validate_python(event)
            with self._arrived:
                self.events.append(event)
                self._arrived.notify_all()
        with self._arrived:
            self._closed = True
            self._arrived.notify_all()

    def send(self, message: dict | str | bytes) -> int:
        """Writes one line; returns the number of events seen before it, for wait_for(after=…)."""
        if isinstance(message, dict):
            message = json.dumps(message)
        line = message.encode() if isinstance(message, str) else message
        with self._arrived:
            seen = len(self.events)
        self.process.stdin.write(line + b"\n")
        self.process.stdin.flush()
        return seen

    def wait_for(self, matches: Callable[[Event], bool], after: int = 0) -> Event:
        def found() -> Event | None:
            return next((event for event in self.events[after:] if matches(event)), None)

        with self._arrived:
            if not self._arrived.wait_for(lambda: found() is not None or self._closed, timeout=TIMEOUT):
                raise TimeoutError(f"no matching event; got {self.events[after:]}")
            event = found()
        assert event is not None, f"engine closed stdout; got {self.events[after:]}"
        return event

    def outcome(self, request_id: str | None, after: int = 0) -> Event:
        """The result or error event that ends `request_id`."""
        return self.wait_for(lambda e: e["id"] == request_id and e["event"] in ("result", "error"), after)

    def call(self, message: dict | str | bytes) -> Event:
        request_id = message.get("id") if isinstance(message, dict) and isinstance(message.get("id"), str) else None
        return self.outcome(request_id, after=self.send(message))

    def index(self, event: Event) -> int:
        return next(i for i, seen in enumerate(self.events) if seen is event)

    def close(self) -> int:
        self.process.stdin.close()
        code = self.process.wait(timeout=TIMEOUT)
        self._log.close()
        return code


@pytest.fixture
def start(cache_dir: Path, engine, tmp_path: Path):
    """Starts engine processes (the `engine` fixture has already generated the shared tiny cache)."""
    processes: list[EngineProcess] = []

    def started(*args: str) -> EngineProcess:
        process = EngineProcess(cache_dir, tmp_path / f"engine-{len(processes)}.log", *args)
        processes.append(process)
        return process

    yield started
    for process in processes:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()


def _train(request_id: str, photos: list[str], output: Path, **params) -> dict:
    return {"id": request_id, "op": "train", "photos": photos, "output": str(output), "params": params}


def _generate(request_id: str, output_dir: Path, **fields) -> dict:
    return {"id": request_id, "op": "generate", "prompt": "sks person", "steps": 2, "width": 96, "height": 64,
            "seed": 1, "output_dir": str(output_dir), **fields}


def test_bad_requests_get_error_events_and_the_engine_keeps_serving(start, photos, tmp_path: Path):
    engine = start()
    assert engine.wait_for(lambda e: e["event"] == "ready") == {
        "id": None, "event": "ready", "profile": "tiny", "device": "cpu"
    }

    for line in ["this is not json", "[1, 2]", b"\xff\xfe{}", '{"op": "ping"}']:
        error = engine.call(line)
        assert (error["event"], error["code"]) == ("error", "bad_request"), error
    assert "invalid JSON" in engine.call("{nope")["message"]

    unknown = engine.call({"id": "u1", "op": "fly"})
    assert (unknown["code"], unknown["message"]) == (
        "bad_request", "unknown op 'fly'; expected one of 'ping', 'cancel', 'train', 'generate'"
    )
    missing = engine.call(_train("t1", [photos[0], str(tmp_path / "missing.png")], tmp_path / "t1.safetensors"))
    assert (missing["code"], missing["message"]) == ("not_found", f"image {tmp_path / 'missing.png'} does not exist")

    for path in sorted((FIXTURES / "invalid-requests").glob("*.json")):
        request = json.loads(path.read_text())
        expected = request.pop("_expect_error_code")
        error = engine.call(request)
        assert (error["event"], error["code"]) == ("error", expected), (path.name, error)
        assert error["id"] == (request["id"] if isinstance(request.get("id"), str) else None)

    pong = engine.call({"id": "p1", "op": "ping"})
    assert pong["pong"] is True and set(pong["versions"]) >= {"torch", "diffusers", "peft"}

    since = engine.send(_generate("g1", tmp_path / "g1"))
    result = engine.outcome("g1", since)
    assert result == {"id": "g1", "event": "result", "images": [str(tmp_path / "g1" / "0.png")], "seed": 1,
                      "flagged": [], "seconds": result["seconds"]}
    steps = [(e["step"], e["total"]) for e in engine.events[since:] if e["id"] == "g1" and e["event"] == "progress"]
    assert steps == [(1, 2), (2, 2)]
    with Image.open(result["images"][0]) as image:
        assert image.size == (96, 64)
    assert engine.close() == 0


def test_ping_and_cancel_are_answered_while_training(start, photos, tmp_path: Path):
    engine = start("--max-jobs", "1")  # one job at a time, so that the generation stays queued
    output = tmp_path / "lora" / "user.safetensors"
    since = engine.send(_train("t1", photos, output, **LONG_TRAIN))
    engine.send(_generate("g-queued", tmp_path / "queued"))
    engine.wait_for(lambda e: e["id"] == "t1" and e["event"] == "progress", since)

    pong = engine.call({"id": "p1", "op": "ping"})
    assert pong["pong"] is True

    # A queued job is dropped at once; the running one stops at its next step. Each cancel's result comes first.
    for target in ["g-queued", "t1"]:
        cancel_since = engine.send({"id": f"c-{target}", "op": "cancel", "target": target})
        answer = engine.outcome(f"c-{target}", cancel_since)
        ended = engine.outcome(target, since)
        assert answer["cancelled"] is True
        assert (ended["event"], ended["code"]) == ("error", "cancelled")
        assert engine.index(answer) < engine.index(ended)
    assert engine.index(pong) < engine.index(engine.outcome("t1"))  # ping did not wait for the training
    assert not output.exists() and not any(output.parent.glob("*"))
    assert not (tmp_path / "queued").exists()

    assert engine.call({"id": "c-none", "op": "cancel", "target": "t1"})["cancelled"] is False
    assert engine.call(_generate("g2", tmp_path / "g2"))["event"] == "result"
    assert engine.close() == 0


def test_closing_stdin_finishes_queued_work_then_exits_0(start, photos, tmp_path: Path):
    engine = start()
    engine.send(_train("t1", photos, tmp_path / "user.safetensors", max_steps=2, resolution=64))
    engine.send(_generate("g1", tmp_path / "g1"))
    assert engine.close() == 0
    assert [engine.outcome(request_id)["event"] for request_id in ("t1", "g1")] == ["result", "result"]
    assert (tmp_path / "user.safetensors").is_file() and (tmp_path / "g1" / "0.png").is_file()


def test_sigterm_cancels_running_work_then_exits_0(start, photos, tmp_path: Path):
    engine = start()
    output = tmp_path / "user.safetensors"
    since = engine.send(_train("t1", photos, output, **LONG_TRAIN))
    engine.send(_train("t2", photos, tmp_path / "other.safetensors", **LONG_TRAIN))  # running beside t1
    for name in ("t1", "t2"):
        engine.wait_for(lambda e, n=name: e["id"] == n and e["event"] == "progress", since)
    engine.process.send_signal(signal.SIGTERM)
    assert engine.process.wait(timeout=TIMEOUT) == 0
    assert engine.outcome("t1")["code"] == engine.outcome("t2")["code"] == "cancelled"
    assert not output.exists() and not (tmp_path / "other.safetensors").exists()


def test_missing_model_folder_fails_start_up_with_an_error_event(start, tmp_path: Path):
    engine = start("--profile", "real", "--base-model", str(tmp_path / "missing"))
    error = engine.outcome(None)
    assert (error["code"], error["message"]) == ("not_found", f"model folder {tmp_path / 'missing'} does not exist")
    assert engine.process.wait(timeout=TIMEOUT) == 1
