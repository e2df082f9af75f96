"""The request loop in-process, with its worker thread not started so that jobs stay queued."""

import io
import json
from pathlib import Path

import threading
import time

from portrait_engine import server as server_module
from portrait_engine.engine import Engine
from portrait_engine.server import Emitter, Server


def test_queue_limit_duplicate_ids_and_cancelling_queued_jobs(engine: Engine, tmp_path: Path):
    out = io.StringIO()
    server = Server(engine, Emitter(out), max_pending=2)

    def generate(request_id: str) -> str:
        return json.dumps({"id": request_id, "op": "generate", "prompt": "x", "output_dir": str(tmp_path)})

    for line in [
        generate("a"),
        generate("b"),
        generate("c"),  # the queue is full
        generate("a"),  # "a" is still queued
        json.dumps({"id": "x1", "op": "cancel", "target": "b"}),
        json.dumps({"id": "x2", "op": "cancel", "target": "b"}),  # already gone
        generate("d"),  # there is room again
        "",  # blank lines are skipped
    ]:
        if line:
            server.handle_line(line)

    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert events == [
        {"id": "c", "event": "error", "code": "busy", "message": "2 jobs are already queued; retry later"},
        {"id": "a", "event": "error", "code": "bad_request", "message": "request 'a' is already in progress"},
        {"id": "x1", "event": "result", "cancelled": True},
        {"id": "b", "event": "error", "code": "cancelled", "message": "cancelled by request"},
        {"id": "x2", "event": "result", "cancelled": False},
    ]
    assert list(tmp_path.iterdir()) == []


def test_validation_errors_name_the_field(engine: Engine):
    out = io.StringIO()
    server = Server(engine, Emitter(out))
    server.handle_line(
        json.dumps({"id": "t", "op": "train", "photos": ["rel.png"], "output": "/o.bin", "params": {"rank": 0, "x": 1}})
    )
    server.handle_line(json.dumps({"id": "m"}))
    messages = [json.loads(line)["message"] for line in out.getvalue().splitlines()]
    assert messages == [
        "photos.0: must be an absolute path; output: must end with .safetensors; "
        "params.rank: Input should be greater than or equal to 1; params.x: unknown field",
        "missing field 'op'",
    ]


def test_an_idle_engine_swaps_in_finished_builds_without_waiting_for_a_request(engine: Engine, monkeypatch):
    """While compiled modules build in other processes, the serving loop looks for them every UPGRADE_POLL_S even
    with no job to run, and stops looking once none builds."""
    calls = []
    building = threading.Event()
    building.set()
    monkeypatch.setattr(server_module, "UPGRADE_POLL_S", 0.05)
    monkeypatch.setattr(Engine, "upgrading", property(lambda self: building.is_set()))
    monkeypatch.setattr(Engine, "upgrade", lambda self: calls.append(time.monotonic()) or (
        len(calls) >= 3 and building.clear()))
    server = Server(engine, Emitter(io.StringIO()))
    reading = threading.Event()
    serving = threading.Thread(target=server.serve, args=(iter(reading.wait, True),))  # no request lines yet
    serving.start()
    deadline = time.monotonic() + 10
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # builds done: the loop waits for work again, no more polling
    assert len(calls) == 3
    reading.set()  # the request lines end: the server closes
    serving.join(10)
    assert not serving.is_alive()
