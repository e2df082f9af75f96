#!/usr/bin/env python3
"""Writes small stand-in ONNX models for the vision tier into test/fixtures/vision/models/.

No real weights can be fetched in CI, so each stand-in has the exact input/output names and shapes of the model it
replaces, and computes its outputs from the input image with a few cheap graph ops. Synthetic test pictures drive
them the way a real photo drives the real model:

  yunet     (face_detection_yunet_2023mar.onnx): a "face" is a reddish patch (R - G >= 128 in the BGR input).
            Per stride the graph pools the patch's first and second moments over a window of cells, so each anchor
            knows the patch's centroid and size; it scores anchors by closeness to the centroid, only in the
            stride whose size band fits the patch and only where the patch fills its box. Eyes/nose/mouth sit at fixed fractions of the box; the nose moves
            sideways with the patch's mean blue (a "turned head").
  yolox     (yolox_l.onnx): a "person" is a greenish patch (G - (R + B) / 2 >= 128); same moment trick, YOLOX layout.
  dwpose    (dw-ll_ucoco_384.onnx): SimCC logits peaked at a fixed 133-point whole-body template inside the 288x384
            crop, shifted by the green patch's centroid and scaled by how much of the crop is green; a few points
            are deliberately faint (score < 0.3) so "missing keypoint" paths are exercised.
  sface     (face_recognition_sface_2021dec.onnx): 4x4 average-pooled RGB times a fixed random projection -> 128-d.

Run: .venv/bin/python scripts/vision/make-onnx-fixtures.py  (needs the `onnx` package; deterministic output).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "test" / "fixtures" / "vision" / "models"
OPSET = 17


class Graph:
    """A tiny builder: every op gets a fresh output name; constants become initializers."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, value, dtype=np.float32, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, out: str | None = None, **attrs) -> str:
        output = out or self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output

    def add(self, a, b): return self.op("Add", [a, b])
    def sub(self, a, b): return self.op("Sub", [a, b])
    def mul(self, a, b): return self.op("Mul", [a, b])
    def div(self, a, b): return self.op("Div", [a, b])
    def clip01(self, x): return self.op("Clip", [x, self.const(0.0), self.const(1.0)])
    def relu(self, x): return self.op("Relu", [x])

    def channel(self, x: str, index: int) -> str:
        return self.op("Slice", [x, self.const([index], np.int64), self.const([index + 1], np.int64), self.const([1], np.int64)])

    def save(self, path: Path, inputs, outputs, doc: str) -> None:
        graph = helper.make_graph(self.nodes, path.stem, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="portrait-bot fixtures")
        model.ir_version = 8
        model.doc_string = doc
        onnx.checker.check_model(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))


def coordinate_maps(g: Graph, height: int, width: int) -> tuple[str, str]:
    """Pixel-centre coordinates broadcastable over [1,1,H,W] (a row and a column, so the file stays small)."""
    x = g.const((np.arange(width, dtype=np.float32) + 0.5).reshape(1, 1, 1, width))
    y = g.const((np.arange(height, dtype=np.float32) + 0.5).reshape(1, 1, height, 1))
    return x, y


def window_sum(g: Graph, x: str, stride: int, cells: tuple[int, int]) -> str:
    """Sum of x over a (cells*stride)-sized window (wide, tall) centred on every stride-cell centre; separable."""
    kx, ky = cells[0] * stride, cells[1] * stride
    px, py = (kx - stride) // 2, (ky - stride) // 2
    rows = g.op("AveragePool", [x], kernel_shape=[ky, 1], strides=[stride, 1], pads=[py, 0, py, 0], count_include_pad=1)
    both = g.op("AveragePool", [rows], kernel_shape=[1, kx], strides=[1, stride], pads=[0, px, 0, px], count_include_pad=1)
    return g.mul(both, g.const(float(kx * ky)))


def patch_moments(g: Graph, mask: str, x: str, y: str, stride: int, cells: tuple[int, int], extra: str | None = None):
    """Centroid, size (sqrt(12 var) = side of a uniform box) and area of the masked patch around each anchor."""
    eps = g.const(1e-6)
    s0 = window_sum(g, mask, stride, cells)
    denom = g.add(s0, eps)
    mean = lambda field: g.div(window_sum(g, g.mul(mask, field), stride, cells), denom)
    mx, my = mean(x), mean(y)
    vx = g.relu(g.sub(mean(g.mul(x, x)), g.mul(mx, mx)))
    vy = g.relu(g.sub(mean(g.mul(y, y)), g.mul(my, my)))
    w = g.op("Sqrt", [g.mul(vx, g.const(12.0))])
    h = g.op("Sqrt", [g.mul(vy, g.const(12.0))])
    extra_mean = mean(extra) if extra else None
    return mx, my, w, h, s0, extra_mean


def anchor_grid(g: Graph, stride: int, size: int, offset: float) -> tuple[str, str]:
    n = size // stride
    cells = np.arange(n, dtype=np.float32) + offset
    return g.const(cells.reshape(1, 1, 1, n)), g.const(cells.reshape(1, 1, n, 1))


def peak_score(g: Graph, mx: str, my: str, w: str, h: str, s0: str, stride: int, size: int, band: tuple[float, float]) -> str:
    """1 near the anchor closest to the centroid, 0 two cells away; only for patches whose size is in the band."""
    col, row = anchor_grid(g, stride, size, 0.5)
    s = g.const(float(stride))
    dx = g.op("Abs", [g.sub(g.div(mx, s), col)])
    dy = g.op("Abs", [g.sub(g.div(my, s), row)])
    near = g.clip01(g.sub(g.const(1.25), g.op("Max", [dx, dy])))
    side = g.op("Max", [w, h])
    # Steps built from Clip (OpenCV's dnn importer, used for the references, has no And/Less/Cast).
    step = lambda edge: g.clip01(g.add(g.mul(g.sub(side, g.const(edge)), g.const(1000.0)), g.const(0.5)))
    in_band = g.mul(step(band[0]), g.sub(g.const(1.0), step(band[1])))
    present = g.clip01(g.div(s0, g.const(64.0)))  # at least ~8x8 px of patch
    # A window straddling two patches sees a wide, hollow "box": score only windows whose patch fills its box.
    fill = g.div(s0, g.add(g.mul(w, h), g.const(1e-6)))
    solid = g.clip01(g.mul(g.sub(fill, g.const(0.6)), g.const(5.0)))
    return g.mul(g.mul(g.mul(near, present), in_band), solid)


def flatten_cells(g: Graph, parts: list[str], n: int, out: str) -> str:
    """[1,1,h,w] maps -> [1, h*w, len(parts)] in row-major cell order."""
    stacked = parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=1)
    flat = g.op("Reshape", [stacked, g.const([1, len(parts), n], np.int64)])
    return g.op("Transpose", [flat], perm=[0, 2, 1], out=out)


# ---------------------------------------------------------------------------------------------------------------
# YuNet
YUNET_SIZE = 640
YUNET_BANDS = {8: (0.0, 64.0), 16: (64.0, 128.0), 32: (128.0, 10_000.0)}
# Landmarks as fractions of the box, relative to its centre: right eye, left eye, nose, right/left mouth corner
# (YuNet's order; "right" is the person's right, on the viewer's left).
YUNET_LANDMARKS = [(-0.18, -0.12), (0.18, -0.12), (0.0, 0.05), (-0.14, 0.22), (0.14, 0.22)]
NOSE_YAW_GAIN = 0.6  # nose x moves by (meanBlue/255 - 0.5) * gain * width


def make_yunet() -> None:
    g = Graph()
    image = "input"
    b, gr, r = g.channel(image, 0), g.channel(image, 1), g.channel(image, 2)
    mask = g.clip01(g.div(g.sub(r, gr), g.const(128.0)))
    x, y = coordinate_maps(g, YUNET_SIZE, YUNET_SIZE)
    outputs = {}
    for stride, band in YUNET_BANDS.items():
        n = (YUNET_SIZE // stride) ** 2
        mx, my, w, h, s0, blue = patch_moments(g, mask, x, y, stride, (20, 20), extra=b)
        score = peak_score(g, mx, my, w, h, s0, stride, YUNET_SIZE, band)
        s = g.const(float(stride))
        col, row = anchor_grid(g, stride, YUNET_SIZE, 0.0)
        bx = g.sub(g.div(mx, s), col)
        by = g.sub(g.div(my, s), row)
        bw = g.op("Log", [g.add(g.div(w, s), g.const(1e-6))])
        bh = g.op("Log", [g.add(g.div(h, s), g.const(1e-6))])
        yaw = g.mul(g.sub(g.div(blue, g.const(255.0)), g.const(0.5)), g.const(NOSE_YAW_GAIN))
        kps = []
        for i, (fx, fy) in enumerate(YUNET_LANDMARKS):
            px = g.add(mx, g.mul(w, g.const(fx)))
            if i == 2:
                px = g.add(px, g.mul(w, yaw))
            py = g.add(my, g.mul(h, g.const(fy)))
            kps += [g.sub(g.div(px, s), col), g.sub(g.div(py, s), row)]
        outputs[f"cls_{stride}"] = flatten_cells(g, [score], n, f"cls_{stride}")
        outputs[f"obj_{stride}"] = flatten_cells(g, [g.op("Sqrt", [score])], n, f"obj_{stride}")
        outputs[f"bbox_{stride}"] = flatten_cells(g, [bx, by, bw, bh], n, f"bbox_{stride}")
        outputs[f"kps_{stride}"] = flatten_cells(g, kps, n, f"kps_{stride}")
    order = [f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)]
    widths = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}
    g.save(
        OUT / "face_detection_yunet_2023mar.onnx",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, YUNET_SIZE, YUNET_SIZE])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, (YUNET_SIZE // int(name.split("_")[1])) ** 2, widths[name.split("_")[0]]]) for name in order],
        "Stand-in for YuNet 2023mar: detects reddish patches. Test fixture, not a face detector.",
    )


# ---------------------------------------------------------------------------------------------------------------
# YOLOX (DWPose person detector)
YOLOX_SIZE = 640
YOLOX_BANDS = {8: (0.0, 48.0), 16: (48.0, 96.0), 32: (96.0, 10_000.0)}


def green_mask(g: Graph, c0: str, c1: str, c2: str) -> str:
    return g.clip01(g.div(g.sub(c1, g.mul(g.add(c0, c2), g.const(0.5))), g.const(128.0)))


def make_yolox() -> None:
    g = Graph()
    image = "images"
    mask = green_mask(g, g.channel(image, 0), g.channel(image, 1), g.channel(image, 2))
    x, y = coordinate_maps(g, YOLOX_SIZE, YOLOX_SIZE)
    per_stride = []
    for stride, band in YOLOX_BANDS.items():
        n = (YOLOX_SIZE // stride) ** 2
        mx, my, w, h, s0, _ = patch_moments(g, mask, x, y, stride, (8, 20))  # people stand side by side
        score = peak_score(g, mx, my, w, h, s0, stride, YOLOX_SIZE, band)
        s = g.const(float(stride))
        col, row = anchor_grid(g, stride, YOLOX_SIZE, 0.0)
        parts = [
            g.sub(g.div(mx, s), col),
            g.sub(g.div(my, s), row),
            g.op("Log", [g.add(g.div(w, s), g.const(1e-6))]),
            g.op("Log", [g.add(g.div(h, s), g.const(1e-6))]),
            score,  # objectness
            g.op("Expand", [g.const(1.0), g.const([1, 1, 1, 1], np.int64)]),  # class 0 (person) probability
        ]
        # classes 1..79: zeros with the grid's shape
        zeros = g.op("Mul", [score, g.const(np.zeros((1, 79, 1, 1), np.float32))])
        parts[5] = g.op("Expand", [parts[5], g.op("Shape", [score])])
        stacked = g.op("Concat", parts + [zeros], axis=1)
        flat = g.op("Reshape", [stacked, g.const([1, 85, n], np.int64)])
        per_stride.append(flat)
    all_cells = g.op("Concat", per_stride, axis=2)
    g.op("Transpose", [all_cells], perm=[0, 2, 1], out="output")
    g.save(
        OUT / "yolox_l.onnx",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, YOLOX_SIZE, YOLOX_SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8400, 85])],
        "Stand-in for DWPose's yolox_l: detects greenish patches as persons. Test fixture, not a detector.",
    )


# ---------------------------------------------------------------------------------------------------------------
# DWPose whole-body (RTMPose SimCC head)
POSE_W, POSE_H, SPLIT = 288, 384, 2.0
POSE_MEAN = [123.675, 116.28, 103.53]
POSE_STD = [58.395, 57.12, 57.375]
FAINT = {3, 4, 20, 21}  # ears and two foot points: below the 0.3 visibility threshold


def pose_template() -> tuple[np.ndarray, np.ndarray]:
    """133 COCO-WholeBody points of a standing person with arms out, in 288x384 crop pixels, plus peak values."""
    body = [
        (144, 70), (153, 62), (135, 62), (165, 66), (123, 66),  # nose, eyes (left, right), ears (left, right)
        (180, 110), (108, 110), (214, 150), (74, 150), (240, 190), (48, 190),  # shoulders, elbows, wrists
        (168, 215), (120, 215), (172, 280), (116, 280), (174, 340), (114, 340),  # hips, knees, ankles
    ]
    feet = [(186, 350), (180, 352), (172, 346), (102, 350), (108, 352), (116, 346)]
    face = []
    for i in range(68):  # an ellipse of 68 face points around the nose
        a = 2 * math.pi * i / 68
        face.append((144 + 18 * math.cos(a), 72 + 22 * math.sin(a)))
    def hand(wx: float, wy: float, direction: float) -> list[tuple[float, float]]:
        pts = [(wx, wy)]
        for finger in range(5):
            spread = (finger - 2) * 0.35
            for joint in range(1, 5):
                d = 6 + 5 * joint
                pts.append((wx + direction * d * math.cos(spread), wy + d * math.sin(spread)))
        return pts
    points = body + feet + face + hand(244, 194, 1.0) + hand(44, 194, -1.0)
    assert len(points) == 133
    peaks = np.array([0.12 if i in FAINT else 0.9 - 0.001 * (i % 50) for i in range(133)], np.float32)
    return np.array(points, np.float32), peaks


def make_dwpose() -> None:
    g = Graph()
    image = "input"
    # Undo the mean/std normalisation to find the green patch in 0..255 RGB.
    def raw(c: int) -> str:
        return g.add(g.mul(g.channel(image, c), g.const(POSE_STD[c])), g.const(POSE_MEAN[c]))
    mask = green_mask(g, raw(0), raw(1), raw(2))
    x, y = coordinate_maps(g, POSE_H, POSE_W)
    area = g.op("ReduceSum", [mask, g.const([1, 2, 3], np.int64)], keepdims=0)  # [1]
    denom = g.add(area, g.const(1e-6))
    cx = g.div(g.op("ReduceSum", [g.mul(mask, x), g.const([1, 2, 3], np.int64)], keepdims=0), denom)
    cy = g.div(g.op("ReduceSum", [g.mul(mask, y), g.const([1, 2, 3], np.int64)], keepdims=0), denom)
    coverage = g.clip01(g.div(area, g.const(0.25 * POSE_W * POSE_H)))  # a quarter of the crop green = full confidence
    template, peaks = pose_template()
    outputs = []
    for axis, (size, centre, name) in enumerate([(POSE_W, cx, "simcc_x"), (POSE_H, cy, "simcc_y")]):
        bins = g.const(np.arange(int(size * SPLIT), dtype=np.float32).reshape(1, 1, -1))  # [1,1,B]
        shift = g.sub(centre, g.const(size / 2))  # follow the patch's centroid
        loc = g.add(g.const(template[:, axis].reshape(1, -1, 1) * SPLIT), g.mul(g.op("Reshape", [shift, g.const([1, 1, 1], np.int64)]), g.const(SPLIT)))
        d = g.div(g.sub(bins, loc), g.const(2.0))
        bump = g.op("Exp", [g.op("Neg", [g.mul(d, d)])])
        peak = g.mul(g.const(peaks.reshape(1, -1, 1)), g.op("Reshape", [coverage, g.const([1, 1, 1], np.int64)]))
        outputs.append(g.op("Mul", [bump, peak], out=name))
    g.save(
        OUT / "dw-ll_ucoco_384.onnx",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, POSE_H, POSE_W])],
        [
            helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, 133, int(POSE_W * SPLIT)]),
            helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, 133, int(POSE_H * SPLIT)]),
        ],
        "Stand-in for DWPose dw-ll_ucoco_384: a fixed whole-body template that follows the green patch. Test fixture.",
    )


# ---------------------------------------------------------------------------------------------------------------
# SFace
def make_sface() -> None:
    g = Graph()
    pooled = g.op("AveragePool", ["data"], kernel_shape=[28, 28], strides=[28, 28])  # [1,3,4,4]
    centred = g.div(g.sub(pooled, g.const(127.5)), g.const(128.0))
    flat = g.op("Reshape", [centred, g.const([1, 48], np.int64)])
    projection = np.random.default_rng(5).standard_normal((48, 128)).astype(np.float32) / math.sqrt(48)
    g.op("MatMul", [flat, g.const(projection)], out="fc1")
    g.save(
        OUT / "face_recognition_sface_2021dec.onnx",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 128])],
        "Stand-in for SFace 2021dec: pooled colours through a fixed random projection. Test fixture.",
    )


def main() -> None:
    make_yunet()
    make_yolox()
    make_dwpose()
    make_sface()
    template, peaks = pose_template()
    (OUT.parent / "fixture-models.json").write_text(json.dumps({
        "yunet": {"landmarks": YUNET_LANDMARKS, "noseYawGain": NOSE_YAW_GAIN, "bands": YUNET_BANDS},
        "yolox": {"bands": YOLOX_BANDS},
        "dwpose": {"template": np.round(template, 4).tolist(), "peaks": np.round(peaks, 4).tolist(), "faint": sorted(FAINT)},
    }, indent=1) + "\n")
    for f in sorted(OUT.iterdir()):
        print(f"{f.relative_to(ROOT)}  {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
