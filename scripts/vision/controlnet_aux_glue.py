"""The glue of controlnet_aux's DWposeDetector.__call__ / draw_pose around its own drawing functions, shared by the
reference scripts (hands are not drawn: the project's drawPose draws body and face)."""
from __future__ import annotations

import numpy as np


def draw_like_controlnet_aux(cn_util, keypoints: np.ndarray, scores: np.ndarray, w: int, h: int, faces: bool,
                             canvas_size: tuple[int, int] | None = None) -> np.ndarray:
    """Keypoints in the pixels of a w×h picture, drawn on a canvas of canvas_size (width, height), else w×h."""
    candidate = keypoints.astype(np.float64)
    nums = candidate.shape[0]
    candidate[..., 0] /= float(w)
    candidate[..., 1] /= float(h)
    bodies = candidate[:, :18].copy().reshape(nums * 18, 2)
    subset = scores[:, :18].astype(np.float64).copy()
    for i in range(len(subset)):
        for j in range(len(subset[i])):
            subset[i][j] = int(18 * i + j) if subset[i][j] > 0.3 else -1
    candidate[scores < 0.3] = -1
    cw, ch = canvas_size or (w, h)
    canvas = np.zeros((ch, cw, 3), np.uint8)
    canvas = cn_util.draw_bodypose(canvas, bodies, subset)
    if faces:
        canvas = cn_util.draw_facepose(canvas, candidate[:, 24:92])
    return canvas
