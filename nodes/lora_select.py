"""InfiniteTalk LoRA: pick a LoRA file and its strength; chain several through prev_lora."""
from __future__ import annotations

from comfy_api.latest import io

from . import choices
from .types import CATEGORY, Lora

NODE = "InfiniteTalk LoRA"


class InfiniteTalkLoraSelect(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfiniteTalkLoraSelect",
            display_name=NODE,
            category=CATEGORY,
            description="Chooses a LoRA (e.g. FusionX or lightx2v for 4-8 step generation) for the "
                        "InfiniteTalk Model Loader.",
            inputs=[
                io.Combo.Input("lora", options=choices.options("loras"),
                               tooltip="LoRA file from models/loras (kohya lora_down/up, PEFT lora_A/B, "
                                       "diff / diff_b; with or without the diffusion_model. prefix)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="How strongly the LoRA is merged (1.0 = as trained)."),
                Lora.Input("prev_lora", optional=True,
                           tooltip="LoRAs chosen by earlier InfiniteTalk LoRA nodes; this one is added "
                                   "after them."),
            ],
            outputs=[Lora.Output(display_name="lora")],
        )

    @classmethod
    def validate_inputs(cls, lora):
        return choices.missing_file(NODE, "lora", "loras", lora) or True

    @classmethod
    def fingerprint_inputs(cls, lora=None, **_):
        return choices.fingerprint("loras", lora)

    @classmethod
    def execute(cls, lora, strength, prev_lora=None) -> io.NodeOutput:
        path = choices.chosen_file(NODE, "lora", "loras", lora)
        return io.NodeOutput(tuple(prev_lora or ()) + ((path, float(strength)),))
