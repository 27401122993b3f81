"""InfiniteTalk T5 Text Encode: prompt and negative prompt -> umT5 states for the sampler."""
from __future__ import annotations

from comfy_api.latest import io

from ..loaders import host
from ..runs.encode_text import encode_text
from . import choices
from .types import CATEGORY, Text, blaming

NODE = "InfiniteTalk T5 Text Encode"
# The official Wan 2.1 / InfiniteTalk default negative prompt (wan/configs/shared_config.py).
DEFAULT_NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
                    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，"
                    "毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")

# What DEFAULT_NEGATIVE says, phrase by phrase (shown in the tooltip; the model gets the Chinese).
NEGATIVE_GLOSS = ("garish colours, overexposed, static, blurry details, subtitles, style, artwork, "
                  "painting, picture, still, greyish overall, worst quality, low quality, JPEG "
                  "artefacts, ugly, mutilated, extra fingers, badly drawn hands, badly drawn face, "
                  "deformed, disfigured, malformed limbs, fused fingers, motionless frame, cluttered "
                  "background, three legs, many people in the background, walking backwards.")


class InfiniteTalkTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfiniteTalkTextEncode",
            display_name=NODE,
            category=CATEGORY,
            description="Encodes the prompt and the negative prompt with umT5-XXL. The encoder stays "
                        "in RAM between runs (one at a time; reloaded when its file changes) and runs "
                        "on the GPU only when 1.2x its size is free there at that moment, else on the "
                        "CPU (slower, no GPU memory). It is moved back to RAM right after encoding.",
            inputs=[
                io.Combo.Input("t5_model", options=choices.options("text_encoders"),
                               tooltip="umT5-XXL encoder from models/text_encoders: the official "
                                       "models_t5_umt5-xxl-enc-bf16.pth, a .safetensors repack, or a "
                                       "quanto int8/fp8 file. Its tokenizer files must lie beside it. "
                                       "Kept in RAM between runs; runs on the CPU when the GPU has "
                                       "no room for it."),
                io.String.Input("prompt", multiline=True, default="A person is talking.",
                                tooltip="What the video shows: the person, the scene, the camera."),
                io.String.Input("negative_prompt", multiline=True, default=DEFAULT_NEGATIVE,
                                tooltip="What to avoid. Prefilled with the official default negative "
                                        "prompt (Chinese, as the model was trained). In English: "
                                        + NEGATIVE_GLOSS),
            ],
            outputs=[Text.Output(display_name="text")],
        )

    @classmethod
    def validate_inputs(cls, t5_model):
        return choices.missing_file(NODE, "t5_model", "text_encoders", t5_model) or True

    @classmethod
    def fingerprint_inputs(cls, t5_model=None, prompt="", negative_prompt="", **_):
        return (choices.fingerprint("text_encoders", t5_model), prompt, negative_prompt)

    @classmethod
    def execute(cls, t5_model, prompt, negative_prompt) -> io.NodeOutput:
        path = choices.chosen_file(NODE, "t5_model", "text_encoders", t5_model)
        with blaming(NODE):
            return io.NodeOutput(encode_text(host, path, prompt, negative_prompt))
