"""The request loop in-process, with its worker thread not started so that jobs stay queued."""

import io
import json
from pathlib import Path

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
