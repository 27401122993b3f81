"""The pack's V3 nodes (the only package besides loaders/host.py that imports the host)."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from ..loaders import host
from .audio_encode import InfiniteTalkAudioEncode
from .lora_select import InfiniteTalkLoraSelect
from .model_loader import InfiniteTalkModelLoader
from .sampler import InfiniteTalkSampler
from .speaker_mask import InfiniteTalkSpeakerMask
from .text_encode import InfiniteTalkTextEncode
from .video_combine import InfiniteTalkVideoCombine

NODES = [
    InfiniteTalkModelLoader,
    InfiniteTalkLoraSelect,
    InfiniteTalkTextEncode,
    InfiniteTalkAudioEncode,
    InfiniteTalkSpeakerMask,
    InfiniteTalkSampler,
    InfiniteTalkVideoCombine,
]


class InfiniteTalkExtension(ComfyExtension):
    async def on_load(self) -> None:
        host.register_folders()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        host.register_folders()       # also here: 0.3.75 does not call on_load for custom nodes
        return list(NODES)
