"""Waveform -> wav2vec2 features at 25 fps, as the official InfiniteTalk pipeline prepares them.

Steps (golden README §3): mono (channel mean) -> 16 kHz (soxr "HQ", librosa's default resampler,
length ceil(N * 16000 / sr) like ``librosa.resample(fix=True)``) -> loudness normalisation to
-23 LUFS (pyloudnorm BS.1770; skipped for silence) -> feature-extractor normalisation -> wav2vec2
with ``seq_len = int(N / 16000 * 25)`` video frames -> ``[T, 12, hidden]``.

Feature-extractor normalisation: the real ``TencentGameMate/chinese-wav2vec2-base``
``preprocessor_config.json`` has ``do_normalize: false`` (ComfyUI core's audio-encoder loader and
Kijai's wrapper both hard-code False for this checkpoint, citing that file), so the official
pipeline, which loads the feature extractor from that folder, feeds the loudness-normalised
waveform unchanged. We therefore follow the checkpoint: ``model.do_normalize`` (False for
chinese-base; the loader reads ``preprocessor_config.json`` when a folder has one). The golden
fixture was made with ``do_normalize=True`` and tests that path explicitly.

Everything here is a pure function of arrays (numpy float32 for the audio front end).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from .soundtrack import user_soundtrack

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FPS = 25
TARGET_LUFS = -23.0


def to_numpy_audio(waveform) -> np.ndarray:
    """A torch tensor or array -> float32 numpy array (no copy when already float32 numpy)."""
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().to("cpu", torch.float32).numpy()
    return np.asarray(waveform, dtype=np.float32)


def to_mono(waveform) -> np.ndarray:
    """[N], [C, N] or [1, C, N] (the host's AUDIO layout) -> [N] float32, channel mean."""
    x = to_numpy_audio(waveform)
    if x.ndim == 3:
        if x.shape[0] != 1:
            raise ValueError(f"audio: expected one clip, got a batch of {x.shape[0]} (shape {x.shape}); "
                             "pass a single AUDIO item")
        x = x[0]
    if x.ndim == 2:
        x = x.mean(axis=0, dtype=np.float32) if x.shape[0] > 1 else x[0]
    if x.ndim != 1:
        raise ValueError(f"audio: expected [samples], [channels, samples] or [1, channels, samples], got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def resample(x: np.ndarray, sample_rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """soxr HQ resampling, output length ceil(N * target / sr) (zero-padded or trimmed)."""
    if sample_rate <= 0:
        raise ValueError(f"audio: invalid sample rate {sample_rate}")
    if sample_rate == target:
        return x
    import soxr

    y = soxr.resample(x, sample_rate, target, quality="HQ").astype(np.float32, copy=False)
    n = int(math.ceil(x.shape[-1] * target / sample_rate))
    if y.shape[-1] < n:
        y = np.pad(y, (0, n - y.shape[-1]))
    return np.ascontiguousarray(y[:n])


def loudness_norm(x: np.ndarray, sample_rate: int = SAMPLE_RATE, target: float = TARGET_LUFS) -> np.ndarray:
    """Scale to ``target`` LUFS (integrated, BS.1770). Silence (|loudness| > 100) is returned as is.

    The gain is rounded to float32 and applied in float32, which is what the reference computes under
    numpy<2; pyloudnorm under numpy>=2 would compute in float64 (1-ulp differences).
    """
    import pyloudnorm

    meter = pyloudnorm.Meter(sample_rate)
    if x.shape[-1] < meter.block_size * sample_rate:
        log.warning("audio: %d samples is shorter than the %.1f s loudness block; loudness not normalised",
                    x.shape[-1], meter.block_size)
        return x
    loudness = meter.integrated_loudness(x)
    if not np.isfinite(loudness) or abs(loudness) > 100:
        return x
    gain = np.float32(10.0 ** ((target - loudness) / 20.0))
    return (x * gain).astype(np.float32, copy=False)


def normalize_input(x: np.ndarray) -> np.ndarray:
    """Wav2Vec2FeatureExtractor(do_normalize=True): (x - mean) / sqrt(var + 1e-7), population var, fp32."""
    x = np.asarray(x, dtype=np.float32)
    return ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32, copy=False)


def num_frames(num_samples: int, sample_rate: int = SAMPLE_RATE, fps: int = FPS) -> int:
    """Video frames covered by the audio: ``int(N / sr * fps)`` (the reference's rounding)."""
    return int(num_samples / sample_rate * fps)


def prepare_waveform(waveform, sample_rate: int, normalize_loudness: bool = True) -> np.ndarray:
    """Any AUDIO-like waveform -> mono 16 kHz float32 [N], loudness-normalised when asked."""
    x = resample(to_mono(waveform), int(sample_rate))
    return loudness_norm(x) if normalize_loudness else x


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def embed_waveform(model, wav16k: np.ndarray, do_normalize: bool | None = None) -> torch.Tensor:
    """Mono 16 kHz float32 [N] -> wav2vec features [T, layers, hidden] float32 on the model's device."""
    seq_len = num_frames(wav16k.shape[-1])
    if seq_len < 1:
        raise ValueError(f"audio: {wav16k.shape[-1]} samples at 16 kHz is shorter than one video frame "
                         f"(1/{FPS} s = {SAMPLE_RATE // FPS} samples); give a longer audio clip")
    if do_normalize is None:
        do_normalize = getattr(model, "do_normalize", False)
    x = normalize_input(wav16k) if do_normalize else np.asarray(wav16k, dtype=np.float32)
    values = torch.from_numpy(np.ascontiguousarray(x)).to(model_device(model))
    return model(values, seq_len).float()


def embed_speech(model, waveform, sample_rate: int, normalize_loudness: bool = True,
                 do_normalize: bool | None = None) -> torch.Tensor:
    """Waveform at any rate / channel count -> [T, layers, hidden] (T = video frames at 25 fps)."""
    return embed_waveform(model, prepare_waveform(waveform, sample_rate, normalize_loudness), do_normalize)


def two_speaker_tracks(a1: np.ndarray, a2: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-speaker 16 kHz tracks for two speakers.

    ``para``: both talk at the same time (the shorter one is zero-padded to equal length).
    ``add``: a conversation: speaker 1 then speaker 2 -> [a1, 0 * len(a2)] and [0 * len(a1), a2].
    """
    a1, a2 = np.asarray(a1, np.float32), np.asarray(a2, np.float32)
    if mode == "para":
        n = max(a1.shape[-1], a2.shape[-1])
        return np.pad(a1, (0, n - a1.shape[-1])), np.pad(a2, (0, n - a2.shape[-1]))
    if mode == "add":
        return (np.concatenate([a1, np.zeros_like(a2)]), np.concatenate([np.zeros_like(a1), a2]))
    raise ValueError(f"audio: unknown two-speaker mode {mode!r}; use 'para' (simultaneous) or 'add' (in turn)")


# ------------------------------------------------------------------------------ one or two speakers
MIN_SECONDS = 0.2          # shorter than this gives no usable mouth motion (5 video frames)
SILENCE_RMS = 1e-4         # on the [-1, 1] scale; below this the clip is treated as silent
MODES = ("para", "add")


class SpeechInputError(ValueError):
    """A speaker's audio cannot be used; ``speaker`` is 0 or 1 (which input to blame)."""

    def __init__(self, speaker: int, problem: str, fix: str):
        self.speaker, self.problem, self.fix = speaker, problem, fix
        super().__init__(f"speaker {speaker + 1}: {problem}. {fix}")


@dataclass(frozen=True)
class SpeechFeatures:
    """What the sampler needs from the audio (the INFINITETALK_AUDIO value).

    embeddings [N, F, 12, 768] float32 CPU (N speakers, F video frames at 25 fps); soundtrack: the
    user's audio [C, S] at ``sample_rate``, as it goes into the video (``soundtrack.py``: never the
    normalised 16 kHz signal the features come from); frames = F."""
    embeddings: torch.Tensor
    soundtrack: torch.Tensor
    sample_rate: int
    frames: int
    speakers: int
    mode: str

    def __getitem__(self, key: str):            # dict-style access (older graphs, the sampler)
        return getattr(self, key)

    def as_audio(self) -> dict:
        """The soundtrack as the host's AUDIO: {"waveform": [1, C, S], "sample_rate"}."""
        return {"waveform": self.soundtrack[None].float(), "sample_rate": self.sample_rate}


def check_waveform(waveform, sample_rate: int, speaker: int = 0) -> None:
    """Refuse clips that are too short for one usable stretch of video or that are silent."""
    wav = waveform if isinstance(waveform, torch.Tensor) else torch.as_tensor(np.asarray(waveform))
    rate = int(sample_rate)
    if rate <= 0:
        raise SpeechInputError(speaker, f"invalid sample rate {rate}", "Load the audio with Load Audio")
    if wav.is_floating_point() and not bool(torch.isfinite(wav).all()):
        bad = int((~torch.isfinite(wav)).sum())
        raise SpeechInputError(speaker, f"the audio holds {bad} NaN or infinite samples",
                               "Re-export the clip from an audio editor (as 16-bit or float WAV)")
    seconds = wav.shape[-1] / rate if wav.numel() else 0.0
    if seconds < MIN_SECONDS:
        raise SpeechInputError(speaker, f"the audio is {seconds:.2f} s long; at least {MIN_SECONDS} s "
                               "is needed", "Use a longer clip")
    if float(wav.float().pow(2).mean().sqrt()) < SILENCE_RMS:
        raise SpeechInputError(speaker, "the audio is silent (all samples ~0)",
                               "Check the file, or that the right channel was picked")


def encode_speakers(model, waveforms: list, sample_rates: list[int], mode: str = "para",
                    normalize_loudness: bool = True) -> SpeechFeatures:
    """One or two speakers' waveforms (any rate / channels) -> ``SpeechFeatures``.

    Each track: mono, 16 kHz, -23 LUFS (when asked). Two speakers: ``para`` plays both at once
    (shorter one zero-padded), ``add`` puts speaker 1 first, then speaker 2 (each silent while the
    other talks). F = int(samples / 16000 * 25) of the (equal-length) tracks, so the video is as
    long as the soundtrack."""
    if not 1 <= len(waveforms) <= 2 or len(waveforms) != len(sample_rates):
        raise ValueError(f"encode_speakers: one or two waveforms with their sample rates, got "
                         f"{len(waveforms)} waveforms and {len(sample_rates)} rates")
    if len(waveforms) == 2 and mode not in MODES:
        raise ValueError(f"audio: unknown two-speaker mode {mode!r}; use 'para' (simultaneous) or "
                         "'add' (in turn)")
    for i, (wav, rate) in enumerate(zip(waveforms, sample_rates)):
        check_waveform(wav, rate, i)
    tracks = [prepare_waveform(w, r, normalize_loudness) for w, r in zip(waveforms, sample_rates)]
    if len(tracks) == 2:
        tracks = list(two_speaker_tracks(tracks[0], tracks[1], mode))
    feats = [embed_waveform(model, t).cpu() for t in tracks]
    frames = min(f.shape[0] for f in feats)
    embeddings = torch.stack([f[:frames] for f in feats])            # [N, F, 12, 768]
    soundtrack, rate = user_soundtrack(waveforms, sample_rates, mode)
    log.info("audio: %d speaker(s), %d frames (%.2f s at %d fps); soundtrack %d Hz, %d channel(s)",
             len(tracks), frames, frames / FPS, FPS, rate, soundtrack.shape[0])
    return SpeechFeatures(embeddings, soundtrack, rate, frames, len(tracks), mode)
