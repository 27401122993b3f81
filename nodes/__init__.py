"""The pack's V3 nodes (the only package besides loaders/host.py + loaders/model_folders.py that imports the host)."""
from __future__ import annotations

import logging

import folder_paths
from comfy_api.latest import ComfyExtension, io

from ..loaders import model_folders
from ..media.video_file import sweep_leftovers
from .audio_encode import InfiniteTalkAudioEncode
from .demo_inputs import offer_to_host
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


_swept = False


def _sweep_once() -> None:
    """At start-up: remove what a killed Video Combine left in output/ (``sweep_leftovers``)."""
    global _swept
    if _swept:
        return
    _swept = True
    try:
        sweep_leftovers(folder_paths.get_output_directory())
    except OSError as err:
        logging.getLogger(__name__).warning("InfiniteTalk: output leftovers not swept: %s", err)


class InfiniteTalkExtension(ComfyExtension):
    async def on_load(self) -> None:
        model_folders.register_folders()
        _sweep_once()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        model_folders.register_folders()       # also here: 0.3.75 does not call on_load for custom nodes
        _sweep_once()
        offer_to_host()               # the bundled workflows' inputs, never over a user's file
        return list(NODES)
