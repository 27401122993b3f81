"""20 prompts back to back keep the server's memory flat (no per-run leak).

A cheap graph that still runs our code every time: a differently named copy of the demo speech per
prompt (so the host's cache cannot skip anything), InfiniteTalk Audio Encode (wav2vec2), and
InfiniteTalk Video Combine writing an mp4 of the reference image with the soundtrack.
"""
from __future__ import annotations

import logging
import shutil

import pytest

from tiny.host_files import REPO, copy_demo_inputs
from tiny.text_audio_files import TINY_WAV2VEC, write_wav2vec_folder
from tiny.dit_files import WAV_DIM

pytestmark = pytest.mark.host
log = logging.getLogger(__name__)

PROMPTS, WARMUP = 20, 5
SLACK_MB = 64                                      # allocator noise; a leak of one run is bigger


def graph(audio_name: str, i: int) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "single_ref_image.png"}},
        "2": {"class_type": "LoadAudio", "inputs": {"audio": audio_name}},
        "3": {"class_type": "InfiniteTalkAudioEncode",
              "inputs": {"wav2vec_model": "chinese-wav2vec2-base", "audio_1": ["2", 0], "mode": "para",
                         "normalize_loudness": True}},
        "4": {"class_type": "InfiniteTalkVideoCombine",
              "inputs": {"images": ["1", 0], "audio": ["3", 1], "frame_rate": 25.0, "quality": 30,
                         "filename_prefix": f"queue_memory/run{i:02d}"}},
    }


def test_rss_stays_flat_over_20_prompts(host):
    w2v = host.models_dir / "wav2vec2" / "chinese-wav2vec2-base"
    if not (w2v / "model.safetensors").exists():
        write_wav2vec_folder(w2v, {**TINY_WAV2VEC, "hidden_size": WAV_DIM, "num_attention_heads": 12})
    copy_demo_inputs(host.input_dir)
    rss = []
    for i in range(PROMPTS):
        name = f"queue_memory_{i:02d}.wav"
        shutil.copyfile(REPO / "demo" / "single_1.wav", host.input_dir / name)
        host.run(graph(name, i), timeout=300)
        rss.append(host.rss_mb())
    log.info("server RSS per prompt (MiB): %s", [round(r) for r in rss])
    assert len(list((host.output_dir / "queue_memory").glob("run*.mp4"))) == PROMPTS
    growth = rss[-1] - rss[WARMUP - 1]
    assert growth < max(SLACK_MB, 0.05 * rss[WARMUP - 1]), (
        f"server memory grew by {growth:.0f} MiB between prompt {WARMUP} and {PROMPTS}: "
        f"{[round(r) for r in rss]}")
