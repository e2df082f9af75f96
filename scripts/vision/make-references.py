#!/usr/bin/env python3
"""Computes the reference values the TypeScript vision tests compare against, with independent implementations:

  - OpenCV's own FaceDetectorYN (YuNet decode + NMS), FaceRecognizerSF (alignCrop + feature), dnn.NMSBoxes;
  - DWPose's ONNX pipeline (IDEA-Research/DWPose ControlNet-v1-1-nightly/annotator/dwpose: onnxdet.py, onnxpose.py,
    wholebody.py) for detection, SimCC decoding and the OpenPose-18 conversion;
  - controlnet_aux's dwpose/util.py draw_bodypose / draw_facepose for the conditioning image.

Nothing from those projects is committed: pass the folders holding their files, and this writes only numbers and
pictures into test/fixtures/vision/reference/. Needs numpy, opencv-python-headless 4.x and onnxruntime (a throwaway
venv is fine):

  python scripts/vision/make-references.py --dwpose /path/annotator/dwpose --controlnet-aux-util /path/dwpose/util.py

The synthetic scenes are described in scenes.json and rendered with the integer formula in render(); the TypeScript
tests render the same scenes with test/helpers/vision.ts.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from controlnet_aux_glue import draw_like_controlnet_aux

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "test" / "fixtures" / "vision"
MODELS = FIXTURES / "models"
OUT = FIXTURES / "reference"


def texture(w: int, h: int) -> np.ndarray:
    x = np.arange(w, dtype=np.int64)[None, :]
    y = np.arange(h, dtype=np.int64)[:, None]
    return (x * 37 + y * 91 + (x * y) % 97) % 64


def render(scene: dict) -> np.ndarray:
    """RGB uint8. Background: neutral grey with texture. Persons: green boxes. Faces: red boxes, blue = texture."""
    w, h = scene["width"], scene["height"]
    t = texture(w, h)
    grey = (110 + t // 2).astype(np.uint8)
    img = np.stack([grey, grey, grey], axis=-1)
    for p in scene.get("persons", []):
        x0, y0, x1, y1 = p["x"], p["y"], p["x"] + p["w"], p["y"] + p["h"]
        img[y0:y1, x0:x1, 0] = 40
        img[y0:y1, x0:x1, 1] = (200 + t[y0:y1, x0:x1] // 4).astype(np.uint8)
        img[y0:y1, x0:x1, 2] = 40
    for f in scene.get("faces", []):
        x0, y0, x1, y1 = f["x"], f["y"], f["x"] + f["w"], f["y"] + f["h"]
        img[y0:y1, x0:x1, 0] = 230
        img[y0:y1, x0:x1, 1] = 60
        img[y0:y1, x0:x1, 2] = (f.get("blue", 96) + t[y0:y1, x0:x1]).astype(np.uint8)
    return img


SCENES = {
    "one-face-640": {"width": 640, "height": 640, "faces": [{"x": 250, "y": 180, "w": 150, "h": 190}]},
    "two-faces-640": {"width": 640, "height": 640, "faces": [{"x": 40, "y": 60, "w": 48, "h": 60}, {"x": 420, "y": 300, "w": 100, "h": 120}]},
    "turned-face-640": {"width": 640, "height": 640, "faces": [{"x": 200, "y": 200, "w": 180, "h": 200, "blue": 180}]},
    "no-face-640": {"width": 640, "height": 640},
    "person-800x600": {"width": 800, "height": 600, "persons": [{"x": 300, "y": 60, "w": 180, "h": 500}], "faces": [{"x": 350, "y": 80, "w": 80, "h": 90}]},
    "two-persons-960x720": {"width": 960, "height": 720, "persons": [{"x": 80, "y": 100, "w": 200, "h": 560}, {"x": 620, "y": 140, "w": 180, "h": 520}]},
    "no-person-640x480": {"width": 640, "height": 480, "faces": [{"x": 250, "y": 180, "w": 100, "h": 120}]},
}


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def yunet_refs() -> dict:
    out = {}
    for name in ("one-face-640", "two-faces-640", "turned-face-640", "no-face-640"):
        bgr = cv2.cvtColor(render(SCENES[name]), cv2.COLOR_RGB2BGR)
        det = cv2.FaceDetectorYN.create(str(MODELS / "face_detection_yunet_2023mar.onnx"), "", (640, 640), 0.6, 0.3, 5000)
        _, faces = det.detect(bgr)
        out[name] = [] if faces is None else np.round(faces.astype(np.float64), 4).tolist()
    return out


def nms_refs(dwpose) -> dict:
    rng = np.random.default_rng(11)
    cases = []
    for _ in range(6):
        n = 40
        xy = rng.uniform(0, 400, (n, 2))
        wh = rng.uniform(20, 120, (n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).round(2)
        scores = rng.uniform(0, 1, n).round(4)
        thr = float(rng.choice([0.3, 0.45, 0.6]))
        # OpenCV's NMSBoxes on integer x,y,w,h rects (what FaceDetectorYN does), score threshold 0.2.
        rects = [[int(b[0]), int(b[1]), int(b[2] - b[0]), int(b[3] - b[1])] for b in boxes]
        keep_cv = cv2.dnn.NMSBoxes(rects, scores.astype(np.float32).tolist(), 0.2, thr)
        keep_yolox = dwpose.nms(boxes, scores, thr)
        cases.append({
            "boxes": boxes.tolist(), "scores": scores.tolist(), "iouThreshold": thr, "scoreThreshold": 0.2,
            "keepOpenCV": [int(i) for i in np.array(keep_cv).reshape(-1)], "keepYolox": [int(i) for i in keep_yolox],
        })
    return {"cases": cases}


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Similarity transform (Umeyama 1991) in float64, written from the paper."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    scale = np.trace(np.diag(sig) @ e) / s.var(0).sum()
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


ALIGN_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]])


def align_refs() -> dict:
    """alignCrop + feature from OpenCV on landmark sets derived from the canonical template (rotated, scaled, jittered)."""
    rng = np.random.default_rng(23)
    scene = {"width": 400, "height": 400, "faces": [{"x": 120, "y": 110, "w": 160, "h": 180}]}
    bgr = cv2.cvtColor(render(scene), cv2.COLOR_RGB2BGR)
    rec = cv2.FaceRecognizerSF.create(str(MODELS / "face_recognition_sface_2021dec.onnx"), "")
    cases = []
    for i in range(6):
        angle = rng.uniform(-0.5, 0.5)
        scale = rng.uniform(1.2, 2.5)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        pts = (ALIGN_DST - 56) @ rot.T * scale + np.array([200, 200]) + rng.normal(0, 1.5, (5, 2))
        pts = pts.astype(np.float32)
        face_row = np.zeros((1, 15), np.float32)
        face_row[0, 4:14] = pts.reshape(-1)
        aligned = rec.alignCrop(bgr, face_row)
        feature = rec.feature(aligned).reshape(-1)
        sample = rng.integers(0, 112, (48, 2))
        cases.append({
            "landmarks": pts.astype(np.float64).round(6).tolist(),
            "matrix": umeyama(pts.astype(np.float64), ALIGN_DST).round(8).tolist(),
            # RGB values of the aligned crop at sampled (x, y)
            "samples": [[int(x), int(y), *[int(v) for v in aligned[y, x, ::-1]]] for x, y in sample],
            "feature": feature.astype(np.float64).round(6).tolist(),
        })
    return {"scene": scene, "cases": cases}


def dwpose_refs(dwpose_dir: Path, cn_util) -> dict:
    pkg = "dwpose_ref"
    load_module(pkg, dwpose_dir / "__init__.py")
    onnxdet = load_module(f"{pkg}.onnxdet", dwpose_dir / "onnxdet.py")
    load_module(f"{pkg}.onnxpose", dwpose_dir / "onnxpose.py")
    wholebody = load_module(f"{pkg}.wholebody", dwpose_dir / "wholebody.py")
    body = object.__new__(wholebody.Wholebody)  # its constructor hard-codes paths and CUDA
    body.session_det = ort.InferenceSession(str(MODELS / "yolox_l.onnx"), providers=["CPUExecutionProvider"])
    body.session_pose = ort.InferenceSession(str(MODELS / "dw-ll_ucoco_384.onnx"), providers=["CPUExecutionProvider"])
    out = {}
    for name in ("person-800x600", "two-persons-960x720", "no-person-640x480"):
        rgb = render(SCENES[name])  # DWPose annotators feed RGB to both models
        boxes = onnxdet.inference_detector(body.session_det, rgb)
        entry = {"boxes": np.round(np.asarray(boxes, np.float64).reshape(-1, 4), 4).tolist()}
        if len(entry["boxes"]) > 0:
            keypoints, scores = body(rgb)
            entry["keypoints"] = np.round(keypoints.astype(np.float64), 4).tolist()
            entry["scores"] = np.round(scores.astype(np.float64), 5).tolist()
            h, w = rgb.shape[:2]
            canvas = draw_like_controlnet_aux(cn_util, keypoints.copy(), scores.copy(), w, h, faces=True)
            cv2.imwrite(str(OUT / f"dwpose-{name}.png"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        out[name] = entry
    return out


def drawing_refs(cn_util) -> dict:
    """Random skeletons (some joints missing, some off-canvas) through controlnet_aux's draw_bodypose."""
    rng = np.random.default_rng(7)
    cases = []
    for i in range(40):
        w, h = [(512, 512), (512, 768), (640, 480), (300, 200)][i % 4]
        people = 1 + (i % 3 == 2)
        kp = rng.uniform(-0.05, 1.05, (people, 18, 2)).round(5)
        sc = np.where(rng.uniform(0, 1, (people, 18)) < 0.15, 0.1, 0.9)
        candidate = kp.reshape(-1, 2)
        subset = np.array([[18 * p + j if sc[p, j] > 0.3 else -1 for j in range(18)] for p in range(people)], np.float64)
        canvas = cn_util.draw_bodypose(np.zeros((h, w, 3), np.uint8), candidate, subset)
        case = {"width": w, "height": h, "keypoints": kp.tolist(), "scores": sc.tolist(), "sha256": hashlib.sha256(canvas.tobytes()).hexdigest()}
        if i < 3:
            cv2.imwrite(str(OUT / f"draw-{i}.png"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
            case["png"] = f"draw-{i}.png"
        cases.append(case)
    # Face points on their own (white radius-3 dots, skipped at x or y <= 0.01)
    faces = rng.uniform(-0.02, 1.0, (2, 68, 2)).round(5)
    canvas = cn_util.draw_facepose(np.zeros((256, 320, 3), np.uint8), faces)
    return {"bodies": cases, "faces": {"width": 320, "height": 256, "points": faces.tolist(), "sha256": hashlib.sha256(canvas.tobytes()).hexdigest()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dwpose", type=Path, required=True, help="folder with DWPose's onnxdet.py, onnxpose.py, wholebody.py, __init__.py")
    parser.add_argument("--controlnet-aux-util", type=Path, required=True, help="controlnet_aux/dwpose/util.py")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    cn_util = load_module("cn_util", args.controlnet_aux_util)
    dwpose_pkg_init = args.dwpose / "__init__.py"
    if not dwpose_pkg_init.exists():
        sys.exit(f"{dwpose_pkg_init} missing: create an empty one (the upstream __init__ imports torch)")
    refs = {
        "opencv": cv2.__version__,
        "scenes": SCENES,
        "yunet": yunet_refs(),
        "alignment": align_refs(),
        "dwpose": dwpose_refs(args.dwpose, cn_util),
        "drawing": drawing_refs(cn_util),
    }
    refs["nms"] = nms_refs(sys.modules["dwpose_ref.onnxdet"])
    (OUT / "references.json").write_text(json.dumps(refs) + "\n")
    for f in sorted(OUT.iterdir()):
        print(f"{f.relative_to(ROOT)}  {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
