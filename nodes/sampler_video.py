"""The sampler's VIDEO: its mp4 in temp/ plus how it was encoded, so Video Combine can copy it.

Video Combine copies this file's streams into the output folder (no second H.264 encode) and then
removes the temp copy. The host keeps this object in its cache, and a later run may hand it to
Video Combine again (only the prefix changed, say), so ``moved_to`` points it at the saved output,
which holds the very same streams.
"""
from __future__ import annotations

import logging
import os

from comfy_api.latest import InputImpl

from ..runs.sample_video import SAMPLER_CRF

log = logging.getLogger(__name__)


class SamplerVideo(InputImpl.VideoFromFile):
    def __init__(self, path: str, crf: int = SAMPLER_CRF):
        super().__init__(str(path))
        self.path = str(path)
        self.crf = int(crf)
        self.is_temp = True

    def moved_to(self, path: str) -> None:
        """The streams now live in ``path`` (a stream copy): drop the temp file, read from there."""
        if self.is_temp:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as err:          # e.g. a read-only temp folder: the host clears it at start
                log.warning("could not remove the sampler's temp video %s: %s", self.path, err)
        InputImpl.VideoFromFile.__init__(self, str(path))
        self.path, self.is_temp = str(path), False
