"""InfiniteTalk Model Loader: the DiT (+ audio adapter, + LoRAs) as a host-memory-managed model."""
from __future__ import annotations

from comfy_api.latest import io

from ..loaders import host, managed_dit, run_choices
from . import choices
from .types import CATEGORY, Lora, Model, adv, blaming

NODE = "InfiniteTalk Model Loader"
FAMILIES = ["InfiniteTalk", "MultiTalk"]


def _auto_attention_text() -> str:
    """What ``auto`` does, from the measured order (models/attention_backends.AUTO_ORDER)."""
    libraries = [c for c in run_choices.AUTO_ATTENTION if c != "sdpa"]
    if not libraries:
        return ("auto: PyTorch SDPA, on the GPU and the CPU (no attention library measured faster; "
                "docs/PERFORMANCE.md)")
    return ("auto: the first installed library that passes a quick accuracy check against SDPA on this "
            "GPU (" + ", ".join(libraries) + "), else sdpa; on the CPU sdpa")


class InfiniteTalkModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfiniteTalkModelLoader",
            display_name=NODE,
            category=CATEGORY,
            description="Loads the Wan2.1-I2V-14B video model with the InfiniteTalk or MultiTalk audio "
                        "adapter. The host moves it in and out of GPU memory like any other model.",
            inputs=[
                io.Combo.Input("model", options=choices.options("diffusion_models"),
                               tooltip="Wan2.1-I2V-14B from models/diffusion_models: the official 7-shard "
                                       "base (pick its .safetensors.index.json), a single-file base, or a "
                                       "full InfiniteTalk/MultiTalk model (incl. MeiGen quanto int8/fp8)."),
                io.Combo.Input("audio_adapter", options=choices.options("audio_adapter", with_none=True),
                               default="none",
                               tooltip="Audio adapter from models/infinitetalk (or models/model_patches): "
                                       "infinitetalk single/multi or multitalk .safetensors. 'none' when "
                                       "'model' already contains the audio layers."),
                io.Combo.Input("family", options=FAMILIES, default="InfiniteTalk",
                               tooltip="Which model the adapter is. InfiniteTalk and MultiTalk adapter "
                                       "files have identical keys, so the pack cannot tell them apart: "
                                       "your choice decides the long-video rule (InfiniteTalk: 9 motion "
                                       "frames, clean context; MultiTalk: 25, re-noised)."),
                io.Combo.Input("precision", options=["auto", "bf16", "fp16", "fp32"], default="auto",
                               tooltip="Compute dtype of the DiT. auto: bf16 where the GPU supports it, "
                                       "else fp16, else fp32. Quantized files keep their int8/fp8 weights."),
                Lora.Input("lora", optional=True,
                           tooltip="LoRAs from InfiniteTalk LoRA nodes (e.g. FusionX / lightx2v for the "
                                   "fast mode), merged into the weights at load time."),
                io.Float.Input("memory_budget_gb", default=0.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="GiB of VRAM the DiT's weights may use (int8/fp8 files count 1 "
                                       "byte a weight). 0 = load the whole DiT onto the GPU. Above 0 "
                                       "and the weights are larger: the 40 transformer blocks are "
                                       "streamed from RAM with prefetch (embeddings and head stay on "
                                       "the GPU, plus two block slots) - slower by 0.2-0.6 % per DiT "
                                       "pass as measured on H100/H200 at 480p bf16 (consumer PCIe "
                                       "links not measured; see docs/PERFORMANCE.md). Needs a CUDA "
                                       "GPU and the whole model in pinned RAM. Ignored when ComfyUI "
                                       "runs on the CPU.",
                               **adv()),
                io.Combo.Input("attention", options=list(run_choices.ATTENTION_CHOICES), default="auto", optional=True,
                               tooltip="Attention kernel. " + _auto_attention_text() + "; the "
                                       "environment variable INFINITETALK_ATTENTION, when set, replaces "
                                       "auto. comfy: ComfyUI's own attention (--use-sage-attention / "
                                       "--use-flash-attention apply). sageattention, flash_attn (FA3, "
                                       "FA4 or FA2), xformers, comfy_kitchen_int8: that library (an "
                                       "optional pip install; named and missing = an error saying what "
                                       "to install). int8 / int8_fp8: the pack's Triton kernels, 8-bit "
                                       "and approximate (docs/PERFORMANCE.md). The info output says what "
                                       "runs.",
                               **adv()),
                io.Combo.Input("compile", options=list(run_choices.COMPILE_CHOICES), default="auto", optional=True,
                               tooltip="torch.compile the 40 transformer blocks: ~27 % faster per DiT "
                                       "pass on an H100 after 10-20 s of compiling at the first run (and "
                                       "for each new resolution). auto: on CUDA where Triton works, off "
                                       "on the CPU (INFINITETALK_COMPILE, when set, replaces auto). on: "
                                       "always try. A compile failure never fails the run: one warning "
                                       "in the console, then the blocks run uncompiled.",
                               **adv()),
                io.Int.Input("gpus", default=1, min=1, max=64, optional=True,
                             tooltip="GPUs that share ONE video (sequence parallel, Ulysses attention). 1 = "
                                     "the normal single-GPU path. N > 1: the DiT runs on N worker "
                                     "processes (Ray, pip install ray), one per GPU, each loading these "
                                     "files; they start with the first prompt and stop on interrupt, "
                                     "idle time or Free model cache. memory_budget_gb is ignored then. "
                                     "On a CPU-only ComfyUI: N CPU processes.",
                             **adv()),
            ],
            outputs=[Model.Output(display_name="model"), io.String.Output(display_name="info")],
        )

    @classmethod
    def validate_inputs(cls, model, audio_adapter="none"):
        return (choices.missing_file(NODE, "model", "diffusion_models", model)
                or choices.missing_file(NODE, "audio_adapter", "audio_adapter", audio_adapter, optional=True)
                or True)

    @classmethod
    def fingerprint_inputs(cls, model=None, audio_adapter="none", **_):
        """Reload when a weight file changes on disk, not only when the choice changes."""
        return (choices.fingerprint("diffusion_models", model),
                choices.fingerprint("audio_adapter", audio_adapter))

    @classmethod
    def execute(cls, model, audio_adapter, family, precision, lora=None, memory_budget_gb=0.0,
                attention="auto", compile="auto", gpus=1) -> io.NodeOutput:  # noqa: A002 - the input's name
        return io.NodeOutput(*load(model, audio_adapter, family, precision, lora or (), memory_budget_gb,
                                   attention, compile, gpus))


def load(model: str, audio_adapter: str, family: str, precision: str, loras, memory_budget_gb: float,
         attention: str, compile: str, gpus: int):  # noqa: A002
    """The chosen files -> ``managed_dit.load_model`` -> (the model, the info text). Its errors name the
    input they blame (attention / compile / gpus / model / audio_adapter / lora, carried on the error)."""
    model_path = choices.chosen_file(NODE, "model", "diffusion_models", model)
    adapter_path = choices.chosen_file(NODE, "audio_adapter", "audio_adapter", audio_adapter, optional=True)
    with blaming(NODE, "model"):
        loaded = managed_dit.load_model(host, model_path, adapter_path, family, precision, loras,
                                        memory_budget_gb, attention, compile, gpus)
    info = (f"{family} | {model}" + (f" + {audio_adapter}" if adapter_path else "")
            + f" | {loaded.dtype} | loras: {len(loras)}"
            + (" | blocks streamed from RAM" if loaded.streaming else "")
            + f" | {loaded.run_info}")
    return loaded, info
