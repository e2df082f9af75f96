"""Resumable training checkpoints.

A checkpoint is a folder `checkpoint-<step>` holding `state.pt` (trained weights, optimizer, LR schedule, loss
scaler, random generators, data order, losses so far) and, for a LoRA, `lora.safetensors` (the adapter at that
step, loadable as any LoRA). Folders appear complete or not at all, and only the newest is kept. A job resumes from
a checkpoint only if its fingerprint matches: same photos (by content), parameters, base model, device and dtype;
the result is then the same as an uninterrupted run's.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from .protocol import TrainParams

log = logging.getLogger(__name__)

STATE = "state.pt"
LORA = "lora.safetensors"
_NAME = re.compile(r"checkpoint-(\d+)")


def default_folder(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".safetensors") + ".checkpoints")


def fingerprint(
    params: TrainParams, photos: Sequence[str], class_photos: Sequence[str], base_hash: str, device: str, dtype: str
) -> str:
    """What must be equal for a checkpoint to continue this job. checkpoint_steps is left out: changing how often
    to save does not change the training."""
    digest = hashlib.sha256()
    described = params.model_dump(mode="json", exclude={"checkpoint_steps"})
    digest.update(json.dumps([described, base_hash, device, dtype], sort_keys=True).encode())
    for group in (photos, class_photos):
        digest.update(b"|")
        for path in group:
            digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()


class Checkpoints:
    def __init__(self, folder: Path, job_fingerprint: str):
        self.folder = folder
        self.fingerprint = job_fingerprint

    def latest(self) -> dict | None:
        """The newest checkpoint's state if it belongs to this job, else None (a stale one is only logged)."""
        steps = sorted(self._steps(), reverse=True)
        if not steps:
            return None
        path = self.folder / f"checkpoint-{steps[0]}" / STATE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as error:
            log.warning("ignoring unreadable checkpoint %s: %s", path, error)
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.warning("ignoring checkpoint %s: it belongs to another job", path)
            return None
        return state

    def save(self, state: dict, write_lora=None) -> Path:
        """Writes `state` as checkpoint-<step> (with `write_lora(path)` adding the LoRA file), then drops older ones."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"checkpoint-{state['step']}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=self.folder))
        try:
            torch.save({**state, "fingerprint": self.fingerprint}, tmp / STATE)
            if write_lora is not None:
                write_lora(tmp / LORA)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for step in self._steps():
            if step != state["step"]:
                shutil.rmtree(self.folder / f"checkpoint-{step}", ignore_errors=True)
        return final

    def clear(self) -> None:
        """Removes the folder once the job's output is written."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def _steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return [int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.fullmatch(p.name)) and p.is_dir()]
