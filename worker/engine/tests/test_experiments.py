"""The experiment runner end to end on the tiny profile: a small grid through the command line, its report, a cell
that fails, and Ctrl-C."""

import json
from pathlib import Path

from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

from portrait_engine import experiments
from portrait_engine.charts import HEADER_HEIGHT, LOSS_SIZE, ROW_LABEL_WIDTH, grid_size
from portrait_engine.engine import Engine
from portrait_engine.protocol import TrainParams, TrainRequest

from .support import RecordingJob

SIZE = 64
STEPS = 4


def _argv(photos: list[str], cache_dir: Path, out: Path, ranks: str) -> list[str]:
    return [
        "--profile", "tiny", "--cache-dir", str(cache_dir), "--device", "cpu",
        "--photos", str(Path(photos[0]).parent), "--out", str(out),
        "--ranks", ranks, "--learning-rates", "3e-2", "--steps", str(STEPS), "--checkpoint-every", "2",
        "--prompts", "a photo of sks person", "--seeds", "7", "--sample-steps", "2", "--resolution", str(SIZE),
    ]  # fmt: skip


def _runs(out: Path) -> dict[str, dict]:
    return {run["name"]: run for run in json.loads((out / "results.json").read_text())["runs"]}


def test_grid_writes_the_report_and_a_failing_cell_does_not_stop_it(
    engine: Engine, photos, cache_dir, tmp_path
):
    out = tmp_path / "report"
    # Rank 200 is above the engine's limit: that cell fails, the ones around it run.
    assert experiments.main(_argv(photos, cache_dir, out, "2,200,4")) == 1

    runs = _runs(out)
    assert list(runs) == ["lora-r2-lr0.03", "lora-r200-lr0.03", "lora-r4-lr0.03"]
    failed = runs.pop("lora-r200-lr0.03")
    assert failed["status"] == "failed" and "rank" in failed["error"] and failed["losses"] == []
    logged = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    for name, run in runs.items():
        assert run["status"] == "ok" and run["error"] is None
        assert len(run["losses"]) == STEPS and run["final_loss"] == run["losses"][-1]
        assert [entry["loss"] for entry in logged if entry["run"] == name] == run["losses"]
        assert run["checkpoints"] == [2, 4] and run["alpha"] == run["rank"]
        assert run["file_size_bytes"] == Path(run["output"]).stat().st_size > 0
        assert run["seconds"] > 0 and run["peak_memory_bytes"] > 0

        # Rows = checkpoints, one column (1 prompt x 1 seed); each cell is the saved sample.
        grid = Image.open(out / run["samples"])
        assert grid.size == grid_size(rows=2, columns=1, cell=SIZE, legend_lines=1)
        for row, step in enumerate(run["checkpoints"]):
            sample = Image.open(out / "samples" / name / f"step-{step}" / "p1-s7.png")
            assert sample.size == (SIZE, SIZE)
            top = HEADER_HEIGHT + row * SIZE
            assert grid.crop((ROW_LABEL_WIDTH, top, ROW_LABEL_WIDTH + SIZE, top + SIZE)).tobytes() == sample.tobytes()
    assert not (out / "samples-lora-r200-lr0.03.png").exists()

    with Image.open(out / "loss.png") as chart:
        assert chart.format == "PNG" and chart.size == LOSS_SIZE
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| lora-")]
    assert [line.split(" | ")[0].removeprefix("| ") for line in table] == [
        "lora-r2-lr0.03", "lora-r200-lr0.03", "lora-r4-lr0.03",
    ]  # fmt: skip
    assert "failed: invalid parameters: rank" in table[1]

    # Sampling mid-training leaves training exactly as it would have been without it.
    plain = engine.train(
        TrainRequest(
            id="plain", op="train", photos=photos, output=str(tmp_path / "plain.safetensors"),
            params=TrainParams(rank=2, alpha=2.0, learning_rate=3e-2, max_steps=STEPS, resolution=SIZE),
        ),
        RecordingJob(),
    )  # fmt: skip
    assert plain.losses == runs["lora-r2-lr0.03"]["losses"]


def test_ctrl_c_writes_the_partial_report_and_leaves_the_unet_clean(
    engine: Engine, photos, cache_dir, tmp_path, monkeypatch
):
    sample_live = experiments.sample_live
    calls = []

    def interrupted_in_second_run(training, *args, **kwargs):
        calls.append(training.step_count)
        if len(calls) == 3:  # the second run's first checkpoint (the first run sampled at steps 2 and 4)
            raise KeyboardInterrupt
        return sample_live(training, *args, **kwargs)

    monkeypatch.setattr(experiments, "sample_live", interrupted_in_second_run)
    out = tmp_path / "report"
    assert experiments.main(_argv(photos, cache_dir, out, "2,4,8")) == 130

    runs = _runs(out)
    assert [run["status"] for run in runs.values()] == ["ok", "interrupted", "not run"]
    interrupted = runs["lora-r4-lr0.03"]
    assert len(interrupted["losses"]) == 2 and interrupted["checkpoints"] == []
    assert (out / "loss.png").exists() and (out / "samples-lora-r2-lr0.03.png").exists()
    assert "| lora-r8-lr0.03 |" in (out / "results.md").read_text()
    unet = engine.models.pipe.unet
    assert not any(isinstance(module, BaseTunerLayer) for module in unet.modules())
