"""Intermediate previews: painted at the right steps, as many as asked (0: none), valid PNGs, on both training paths;
and a job trains exactly the same with or without them, and so do the jobs sharing its batches."""

from pathlib import Path

from PIL import Image

from portrait_engine.engine import Engine
from portrait_engine.previews import preview_steps
from portrait_engine.protocol import TrainParams, TrainRequest

from .support import RecordingJob
from .test_scheduler import _train, running  # noqa: F401 (the fixture)


def _is_png(path: str, side: int) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (side, side)
        image.verify()


def test_preview_steps_are_evenly_spaced_before_the_end():
    assert preview_steps(12, 2) == [4, 8]
    assert preview_steps(400, 3) == [100, 200, 300]
    assert preview_steps(3, 2) == [1, 2]
    assert preview_steps(2, 4) == [1]  # never the last step, never twice the same
    assert preview_steps(1, 2) == []
    assert preview_steps(100, 0) == []


def test_scheduler_paints_previews_in_the_jobs_slot_without_changing_anyones_training(running, photos, tmp_path):
    def both(previews: int, folder: Path):
        server = running()
        server.send({**_train("t1", photos, folder / "t1.safetensors", max_steps=6, seed=1), "previews": previews,
                     "preview_steps": 2})
        server.send(_train("t2", photos, folder / "t2.safetensors", max_steps=6, seed=2, rank=2))
        outcomes = server.events.outcome("t1"), server.events.outcome("t2")
        server.close()
        previews = [e for e in server.events.events if e["event"] == "preview"]
        return outcomes, previews, server.events

    (t1, t2), previews, events = both(2, tmp_path / "with")
    (u1, u2), none, _ = both(0, tmp_path / "without")

    assert t1["event"] == t2["event"] == "result"
    assert [(e["id"], e["step"], e["total"]) for e in previews] == [("t1", 2, 6), ("t1", 4, 6)]
    for event in previews:
        assert event["image"] == str(tmp_path / "with" / f"preview-{event['step']}.png")
        _is_png(event["image"], 64)
        # Each comes right after its step's progress, before the next step's.
        progress = [e for e in events.progress("t1") if e["step"] == event["step"]]
        assert progress and events.position(progress[0]) < events.position(event)
    assert none == [] and not list((tmp_path / "without").glob("preview-*"))
    # Bit for bit: the previewed job and its batch mate.
    assert t1["losses"] == u1["losses"] and t2["losses"] == u2["losses"]


def test_peft_path_paints_previews_without_changing_the_training(engine: Engine, photos, tmp_path):
    def train(previews: int, name: str) -> tuple[list[float], RecordingJob]:
        job = RecordingJob()
        request = TrainRequest(
            id=name, op="train", photos=photos, output=str(tmp_path / name / "lora.safetensors"), previews=previews,
            preview_steps=2, preview_dir=str(tmp_path / name / "previews"),
            params=TrainParams(max_steps=4, resolution=64, learning_rate=1e-2, seed=3),
        )
        return engine.train(request, job).losses, job

    with_previews, job = train(3, "with")
    without, quiet = train(0, "without")

    assert [(step, total) for step, total, _ in job.previews] == [(1, 4), (2, 4), (3, 4)]
    for step, _, image in job.previews:
        assert image == str(tmp_path / "with" / "previews" / f"preview-{step}.png")
        _is_png(image, 64)
    assert quiet.previews == []
    assert with_previews == without


def test_a_preview_follows_its_steps_progress_even_one_the_interval_held_back(photos, tmp_path):
    import io
    import json

    from portrait_engine.server import Emitter, Job

    stream = io.StringIO()
    job = Job(TrainRequest(id="t", op="train", photos=photos, output=str(tmp_path / "t.safetensors")),
              Emitter(stream))
    job.progress(1, 6, 0.5)
    job.progress(2, 6, 0.4)  # within the progress interval: held back
    job.preview(2, 6, "/x/preview-2.png")
    job.progress(3, 6, 0.3)  # held back again, and no preview for it
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [("progress", 1), ("progress", 2), ("preview", 2)]
    assert events[1]["loss"] == 0.4
