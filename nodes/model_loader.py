"""InfiniteTalk Model Loader: the DiT (+ audio adapter, + LoRAs) as a host-memory-managed model."""
from __future__ import annotations

from comfy_api.latest import io

from ..loaders import host
from .types import CATEGORY, Lora, Model, adv, input_error

NODE = "InfiniteTalk Model Loader"
FAMILIES = ["InfiniteTalk", "MultiTalk"]


def _model_choice(kind: str, name: str, input_name: str, optional: bool = False) -> str | None:
    if optional and name in ("none", "", None):
        return None
    path = host.resolve_model(kind, name)
    if path is None:
        raise input_error(NODE, input_name, f"file '{name}' was not found",
                          f"Put it in {host.folder_hint(kind)} and refresh the page (R)")
    return path


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
                io.Combo.Input("model", options=host.list_models("diffusion_models"),
                               tooltip="Wan2.1-I2V-14B from models/diffusion_models: the official 7-shard "
                                       "base (pick its .safetensors.index.json), a single-file base, or a "
                                       "full InfiniteTalk/MultiTalk model (incl. MeiGen quanto int8/fp8)."),
                io.Combo.Input("audio_adapter", options=["none"] + host.list_models("audio_adapter"),
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
            ],
            outputs=[Model.Output(display_name="model"), io.String.Output(display_name="info")],
        )

    @classmethod
    def validate_inputs(cls, model, audio_adapter="none"):
        return (host.missing_file(NODE, "model", "diffusion_models", model)
                or (audio_adapter != "none" and host.missing_file(NODE, "audio_adapter", "audio_adapter",
                                                                  audio_adapter))
                or True)

    @classmethod
    def fingerprint_inputs(cls, model=None, audio_adapter="none", **_):
        """Reload when a weight file changes on disk, not only when the choice changes."""
        return (host.fingerprint("diffusion_models", model),
                host.fingerprint("audio_adapter", audio_adapter))

    @classmethod
    def execute(cls, model, audio_adapter, family, precision, lora=None,
                memory_budget_gb=0.0) -> io.NodeOutput:
        model_path = _model_choice("diffusion_models", model, "model")
        adapter_path = _model_choice("audio_adapter", audio_adapter, "audio_adapter", optional=True)
        try:
            attention = host.select_attention()
        except ValueError as err:   # a bad INFINITETALK_ATTENTION value: not an input of this node
            raise RuntimeError(f"{NODE}: {err}") from None
        try:
            loaded = host.load_model(model_path, adapter_path, family, precision, lora or (),
                                     memory_budget_gb)
        except ValueError as err:   # LoaderError and the loaders' own errors
            raise input_error(NODE, "audio_adapter" if adapter_path and "adapter" in str(err).lower()
                              else "model", str(err)) from None
        info = (f"{family} | {model}" + (f" + {audio_adapter}" if adapter_path else "")
                + f" | {loaded.dtype} | loras: {len(lora or ())}"
                + (" | blocks streamed from RAM" if loaded.streaming else "")
                + (f" | attention {attention}" if attention != "sdpa" else ""))
        return io.NodeOutput(loaded, info)
