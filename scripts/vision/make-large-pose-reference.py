#!/usr/bin/env python3
"""The /pose conditioning image of a 12 MP (3024×4032) photo as controlnet_aux's DWposeDetector.__call__ makes it:
the picture resized to detect_resolution (512 on the short side, sides rounded to 64), the pose drawn there, then
resized with cv2.INTER_LINEAR to image_resolution. The keypoints are the DWPose reference keypoints of the
person-800x600 scene (references.json), placed at the same relative positions in a 3024×4032 frame.

Nothing from controlnet_aux is committed: pass its files; this writes only pictures and numbers into
test/fixtures/vision/reference/. Needs numpy, opencv-python-headless 4.x and torch (controlnet_aux/util.py imports it):

  python scripts/vision/make-large-pose-reference.py --controlnet-aux-util /path/controlnet_aux/util.py \
      --dwpose-util /path/controlnet_aux/dwpose/util.py

As in make-references.py, hands are not drawn (the project's drawPose draws body and face).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np

from controlnet_aux_glue import draw_like_controlnet_aux

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "test" / "fixtures" / "vision" / "reference"
FRAME = (3024, 4032)  # width, height of the "phone photo"


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bright(img: np.ndarray) -> int:
    return int((img.max(axis=2) > 50).sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--controlnet-aux-util", type=Path, required=True)
    parser.add_argument("--dwpose-util", type=Path, required=True)
    args = parser.parse_args()
    aux = load_module("cn_aux_util", args.controlnet_aux_util)
    cn_util = load_module("cn_dwpose_util", args.dwpose_util)
    ref = json.loads((OUT / "references.json").read_text())["dwpose"]["person-800x600"]
    ref_w, ref_h = 800, 600
    keypoints = np.asarray(ref["keypoints"], np.float64)
    scores = np.asarray(ref["scores"], np.float64)
    # The same relative positions in the large frame, in its pixels (what DWPose would report there).
    keypoints = np.round(keypoints / [ref_w, ref_h] * FRAME, 4)

    # DWposeDetector.__call__, with pose_estimation's output replaced by these keypoints.
    photo = np.zeros((FRAME[1], FRAME[0], 3), np.uint8)
    detect = aux.resize_image(aux.HWC3(photo), 512)
    H, W, _ = detect.shape
    # Normalised by the frame, as candidate[..., 0] /= W normalises by the detect canvas; drawn on that canvas.
    canvas = draw_like_controlnet_aux(cn_util, keypoints, scores, *FRAME, faces=True, canvas_size=(W, H))
    out = {"frame": list(FRAME), "keypoints": keypoints.tolist(), "scores": scores.tolist(), "opencv": cv2.__version__, "images": {}}
    for resolution in (512, 768):
        img = aux.resize_image(detect, resolution)
        h, w, _ = img.shape
        drawn = cv2.resize(aux.HWC3(canvas), (w, h), interpolation=cv2.INTER_LINEAR)
        name = f"pose-3024x4032-at-{resolution}.png"
        cv2.imwrite(str(OUT / name), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        out["images"][str(resolution)] = {"png": name, "width": w, "height": h, "bright": bright(drawn), "sha256": hashlib.sha256(drawn.tobytes()).hexdigest()}
        print(name, w, h, "bright pixels (max channel > 50):", bright(drawn))
    (OUT / "pose-3024x4032.json").write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
