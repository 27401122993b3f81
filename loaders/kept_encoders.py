"""umT5 and wav2vec2 kept in RAM between runs (comfy-free; ``host`` is loaders/host.py or a stand-in).

One model of each kind at a time, reloaded when its files' ``file_key`` changes (size, times,
sampled bytes). umT5 runs on the host's text-encoder device when 1.2x its size is free there at that
moment, else on the CPU; wav2vec2 (small) runs on the text-encoder device. Both go back to the
offload device right after encoding, so they hold no GPU memory between runs.

``host`` needs: ``text_encoder_devices() -> (device, offload)``, ``offload_device()``,
``free_memory_on(device)``, ``is_device_cpu(device)``, ``soft_empty_cache()``.
"""
from __future__ import annotations

import logging
from typing import Callable

from .file_keys import file_key
from .streaming import weight_bytes

log = logging.getLogger(__name__)
HEADROOM = 1.2       # free memory needed on the GPU, as a multiple of the encoder's weights


class KeptModel:
    """One model kept between runs: ``get(path)`` reads it again only when ``file_key(path)`` changed."""

    def __init__(self, load: Callable):
        self.load = load
        self.key = None
        self.model = None

    def get(self, path: str, **load_kwargs):
        key = file_key(path)
        if self.key != key:
            self.model = self.key = None          # the old model goes before the new one is read
            self.model = self.load(path, **load_kwargs)
            self.key = key
        return self.model


def _load_umt5(path: str):
    from .text import load_umt5             # on first use: the node pack imports without transformers
    return load_umt5(path)


def _load_wav2vec(path: str, device=None):
    from .speech import load_wav2vec
    return load_wav2vec(path, device=device)


_text = KeptModel(_load_umt5)                # -> (model, tokenizer)
_speech = KeptModel(_load_wav2vec)


def fits(module, device, host) -> bool:
    """Room for ``module`` on ``device`` now (buffers count: quantized umT5 weights are buffers)."""
    if host.is_device_cpu(device):
        return True
    return host.free_memory_on(device) > weight_bytes(module) * HEADROOM


def text_encoder(path: str, host):
    """The umT5 (model, tokenizer) for ``path``, moved to the text-encoder device when it fits there
    now, else to the offload device (the CPU)."""
    model, tokenizer = _text.get(path)
    device, _ = host.text_encoder_devices()
    target = device if fits(model, device, host) else host.offload_device()
    if target != device:
        log.info("InfiniteTalk: umT5 does not fit in %s now; encoding on the CPU", device)
    return model.to(target), tokenizer


def encode_texts(path: str, texts: list[str], host) -> list:
    """Texts -> trimmed umT5 states [1, L_i, 4096] (float32, CPU), then the encoder goes back off."""
    model, tokenizer = text_encoder(path, host)
    device = next(model.parameters()).device
    out = []
    for text in texts:
        ids, mask = tokenizer(text)                     # [1, 512] each, padded
        ids, mask = ids.to(device), mask.to(device)
        out.append(model.encode_trimmed(ids, mask)[0][None].float().cpu())
    model.to(host.offload_device() if not host.is_device_cpu(device) else device)
    host.soft_empty_cache()
    return out


def load_speech_model(path: str, host):
    """wav2vec2 (file or Hugging Face folder) on the text-encoder device."""
    device, _ = host.text_encoder_devices()
    return _speech.get(path, device=device).to(device)


def release_speech_model(host) -> None:
    """After encoding: the kept wav2vec2 goes back to the offload device (RAM)."""
    model = _speech.model
    if model is None:
        return
    target = host.text_encoder_devices()[1]
    if next(model.parameters()).device != target:
        model.to(target)
        host.soft_empty_cache()
