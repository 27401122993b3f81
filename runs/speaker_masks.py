"""Speaker masks from the Speaker Masks node's inputs: halves, boxes, painted masks or detected faces,
plus the tinted preview (red = speaker 1, blue = speaker 2, grey = background; face boxes outlined)."""
from __future__ import annotations

import math
import re

import torch

from ..errors import InputError
from ..media import faces as F
from ..samplers import masks as M

METHODS = ("halves", "boxes", "masks", "faces")
TINTS = torch.tensor([[1.0, 0.25, 0.25], [0.25, 0.45, 1.0], [0.5, 0.5, 0.5]])


def parse_boxes(text: str) -> list[list[float]]:
    """"x1,y1,x2,y2; x1,y1,x2,y2" -> boxes, in the order written."""
    boxes = []
    for part in (p for p in re.split(r"[;\n]", text or "") if p.strip()):
        try:
            nums = [float(v) for v in re.split(r"[,\s]+", part.strip()) if v]
        except ValueError:
            nums = []
        if len(nums) != 4 or not all(math.isfinite(v) for v in nums):
            raise InputError("boxes", f"'{part.strip()}' is not 4 numbers",
                             "Write each box as x1,y1,x2,y2 in pixels, boxes separated by ';'")
        x1, y1, x2, y2 = nums
        if x2 <= x1 or y2 <= y1:
            raise InputError("boxes", f"box '{part.strip()}' is empty (x2 <= x1 or y2 <= y1)")
        boxes.append(nums)
    return boxes


def _box_regions(text: str, h: int, w: int) -> list[list[float]]:
    """Exactly two boxes inside the image, left to right = speaker order."""
    parsed = parse_boxes(text)
    if len(parsed) != 2:
        raise InputError("boxes", f"need exactly 2 boxes (one per speaker), got {len(parsed)}")
    parsed.sort(key=lambda b: b[0])
    for b in parsed:
        if b[0] < 0 or b[1] < 0 or b[2] > w or b[3] > h:
            raise InputError("boxes", f"box {b} lies outside the {w}x{h} image")
    return parsed


def _face_regions(image: torch.Tensor) -> tuple[list[list[int]], list[tuple]]:
    """The two most confident faces, left to right -> their head-and-shoulders boxes (xyxy) and the face boxes."""
    try:
        return F.face_speaker_boxes(image[0], speakers=2)
    except F.FaceDetectionError as err:
        raise InputError("method", f"'faces': {err}") from None


def _painted(mask_1, mask_2, h: int, w: int) -> torch.Tensor:
    if mask_1 is None or mask_2 is None:
        raise InputError("mask_1", "method 'masks' needs both mask_1 and mask_2 connected")
    for name, m in (("mask_1", mask_1), ("mask_2", mask_2)):
        if tuple(m.shape[-2:]) != (h, w):
            raise InputError(name, f"mask is {m.shape[-1]}x{m.shape[-2]} but the image is {w}x{h}",
                             "Paint the mask on this image (or resize it to match)")
    return M.user_masks(mask_1, mask_2)


def outline(preview: torch.Tensor, boxes, width: int) -> torch.Tensor:
    """Draw each box in white on the preview [1, H, W, 3] (in place)."""
    h, w = preview.shape[1:3]
    for box in boxes:
        x1, y1, x2, y2 = (int(round(v)) for v in box[:4])
        x1, x2, y1, y2 = max(0, x1), min(w, x2), max(0, y1), min(h, y2)
        preview[0, y1:y2, x1:min(x1 + width, x2)] = 1.0
        preview[0, y1:y2, max(x2 - width, x1):x2] = 1.0
        preview[0, y1:min(y1 + width, y2), x1:x2] = 1.0
        preview[0, max(y2 - width, y1):y2, x1:x2] = 1.0
    return preview


def build(image, method: str, boxes: str, mask_1=None, mask_2=None) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [B, H, W, C] + the method's inputs -> (masks [3, H, W], preview [1, H, W, 3])."""
    h, w = int(image.shape[1]), int(image.shape[2])
    faces = []
    if method == "halves":
        out = M.halves_masks(h, w)
    elif method == "boxes":
        out = M.box_masks(h, w, _box_regions(boxes, h, w), layout="xyxy")
    elif method == "masks":
        out = _painted(mask_1, mask_2, h, w)
    elif method == "faces":
        regions, faces = _face_regions(image)
        out = M.box_masks(h, w, regions, layout="xyxy")
    else:
        raise InputError("method", f"unknown method '{method}'")
    for i, name in enumerate(("speaker 1", "speaker 2")):
        if not bool(out[i].any()):
            raise InputError("method", f"the {name} region is empty")
    tint = (out[..., None] * TINTS[:, None, None, :]).sum(0).clamp(0, 1)       # [H, W, 3]
    preview = (image[:1, ..., :3] * 0.55 + tint[None] * 0.45).clamp(0, 1)
    return out, outline(preview, faces, max(1, min(h, w) // 200))
