"""InfiniteTalk / MultiTalk talking-video nodes for ComfyUI.

Importing this package does nothing else: the host calls ``comfy_entrypoint()`` and only then are the
node modules (the only ones that import ``comfy*``) loaded.
"""

__version__ = "0.1.0"


async def comfy_entrypoint():
    from .nodes import InfiniteTalkExtension

    return InfiniteTalkExtension()
