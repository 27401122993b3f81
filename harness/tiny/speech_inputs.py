"""Real-length speech inputs for the host tests, built at test time from the bundled demo clips.

Nothing large is committed: demo/ holds 4 s excerpts of the official InfiniteTalk demo audio (see
demo/SOURCES.md). From them we build what users really feed the workflows: minutes-long speech at
44.1 / 48 kHz stereo, and a two-speaker conversation split into one track per speaker (the man
talks, then the woman, in turn; each track silent while the other talks: the "para" layout of the
official multi-person demo). The channels differ (right = 0.7 x left, one sample later), so a mixup
of channels or a resampled / shifted soundtrack shows in the comparison.
"""
from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo"


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """int16 WAV -> float32 [C, S] in -1..1 (LoadAudio's scaling) and the rate."""
    with wave.open(str(path)) as r:
        rate, channels = r.getframerate(), r.getnchannels()
        data = np.frombuffer(r.readframes(r.getnframes()), np.int16)
    return (data.reshape(-1, channels).T.astype(np.float32) / 32768.0), rate


def write_wav(path: str | Path, audio: np.ndarray, rate: int) -> Path:
    """float32 [C, S] -> int16 WAV."""
    pcm = np.clip(np.round(audio.T * 32767.0), -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(audio.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm).tobytes())
    return Path(path)


def _upsample_stereo(mono16k: np.ndarray, rate: int) -> np.ndarray:
    import soxr

    x = soxr.resample(mono16k.astype(np.float32), 16000, rate, quality="HQ").astype(np.float32)
    right = np.concatenate([[0.0], 0.7 * x[:-1]]).astype(np.float32)
    return np.stack([x, right])


def _tile(x: np.ndarray, seconds: float, rate: int) -> np.ndarray:
    n = int(round(seconds * rate))
    reps = math.ceil(n / x.shape[-1])
    return np.tile(x, (1, reps))[:, :n] if x.ndim == 2 else np.tile(x, reps)[:n]


def long_speech(path: str | Path, seconds: float, rate: int = 48000) -> Path:
    """One speaker (the demo song) repeated to ``seconds``, stereo at ``rate``."""
    mono, sr = read_wav(DEMO / "single_1.wav")
    assert sr == 16000
    return write_wav(path, _upsample_stereo(_tile(mono[0], seconds, sr), rate), rate)


def conversation(folder: str | Path, seconds: float, rate: int = 44100,
                 stem: str = "conversation") -> tuple[Path, Path]:
    """A two-person conversation of ``seconds``, one track per speaker (man, woman), stereo at ``rate``."""
    man, sr = read_wav(DEMO / "multi_1-man.wav")
    woman, _ = read_wav(DEMO / "multi_1-woman.wav")
    folder = Path(folder)
    out = []
    for who, clip in (("man", man), ("woman", woman)):
        track = _upsample_stereo(_tile(clip[0], seconds, sr), rate)
        out.append(write_wav(folder / f"{stem}_{who}.wav", track, rate))
    return out[0], out[1]


def video_frames(paths: list[Path], mode: str = "para") -> int:
    """Frames the pack makes for these clips (25 fps of the 16 kHz tracks, as speech.py counts)."""
    n16 = []
    for p in paths:
        with wave.open(str(p)) as r:
            n16.append(math.ceil(r.getnframes() * 16000 / r.getframerate()))
    total = sum(n16) if mode == "add" else max(n16)
    return int(total / 16000 * 25)
