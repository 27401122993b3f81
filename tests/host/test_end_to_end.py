"""The whole pack in the real host: tiny models, a short WAV and a small picture -> an mp4.

One API-format graph (LoadImage, LoadAudio, VAELoader, CLIPVisionLoader + our six nodes) goes
through ``POST /prompt``; we check the file (H.264 + AAC, frame count = audio length at 25 fps,
25 fps), the progress messages over the websocket, that the host frees our model, that the same
seed gives the same frames, and that an interrupt leaves no partial file behind.

Sizes keep it quick on 2 CPU cores: 3.6 s of audio = 90 frames = 2 windows of 81 (9 motion
frames), 64x64 video, 1 step, tiny DiT / umT5 / wav2vec2 / VAE (CLIP-H is full size: the host
knows no smaller one).
"""
from __future__ import annotations

import asyncio
import copy
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from host_server import HostError

from tiny import dit_files as D
from tiny import host_files as H
from tiny import text_audio_files as TA

pytestmark = pytest.mark.host

AUDIO_SECONDS = 3.6
FRAMES = int(AUDIO_SECONDS * 25)              # 90 video frames -> 2 windows
IMAGE_NAME, AUDIO_NAME = "e2e_face.png", "e2e_speech.wav"
T5_NAME, W2V_NAME = "e2e/models_t5_umt5-xxl-enc-bf16.pth", "e2e-chinese-wav2vec2-base"
VAE_NAME, CLIP_NAME = "e2e_wan_2.1_vae.safetensors", "clip_vision_h.safetensors"


def _speech_like(seconds: float, rate: int = 16000) -> np.ndarray:
    """A voiced-sounding test signal: harmonics with a 4 Hz syllable envelope (int16, mono)."""
    t = np.arange(int(seconds * rate)) / rate
    voice = sum(np.sin(2 * np.pi * f0 * t) / k for k, f0 in enumerate((140, 280, 420, 910), 1))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t)
    return (voice * envelope / 2.2 * 20000).astype(np.int16)


def write_models(models_dir: Path) -> dict[str, str]:
    """Tiny DiT set (7 shards + adapter), umT5 .pth + tokenizer, wav2vec2 folder, VAE, CLIP-H."""
    roles = D.write_demo_models(models_dir)
    t5 = models_dir / "text_encoders" / T5_NAME
    t5.parent.mkdir(parents=True, exist_ok=True)
    TA.write_umt5_pth(t5, {**TA.TINY_T5, "dim": D.TINY["text_dim"]})
    TA.write_tokenizer_folder(t5.parent / "google" / "umt5-xxl")
    TA.write_wav2vec_folder(models_dir / "wav2vec2" / W2V_NAME,
                            {**TA.TINY_WAV2VEC, "hidden_size": D.WAV_DIM, "num_attention_heads": 12})
    H.write_host_models(models_dir, vae_name=VAE_NAME, clip_name=CLIP_NAME)
    return {"model": roles["model"].removeprefix("diffusion_models/"),
            "adapter": roles["audio_adapter_single"].removeprefix("infinitetalk/")}


def build_prompt(model: str, adapter: str, *, seed: int = 7, steps: int = 1,
                 prefix: str = "e2e/talk") -> dict:
    """The API-format graph this test queues (also the template for the shipped workflows)."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": IMAGE_NAME}},
        "2": {"class_type": "LoadAudio", "inputs": {"audio": AUDIO_NAME}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": VAE_NAME}},
        "4": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": CLIP_NAME}},
        "5": {"class_type": "InfiniteTalkModelLoader",
              "inputs": {"model": model, "audio_adapter": adapter, "family": "InfiniteTalk",
                         "precision": "fp32", "memory_budget_gb": 0.0, "lora": ["10", 0]}},
        "10": {"class_type": "InfiniteTalkLoraSelect",
               "inputs": {"lora": "tiny_lightx2v_lora_rank4.safetensors", "strength": 0.5}},
        "6": {"class_type": "InfiniteTalkTextEncode",
              "inputs": {"t5_model": T5_NAME, "prompt": "A woman is talking to the camera.",
                         "negative_prompt": "static, blurred details"}},
        "7": {"class_type": "InfiniteTalkAudioEncode",
              "inputs": {"wav2vec_model": W2V_NAME, "audio_1": ["2", 0], "mode": "para",
                         "normalize_loudness": True}},
        "8": {"class_type": "InfiniteTalkSampler",
              "inputs": {"model": ["5", 0], "text": ["6", 0], "audio": ["7", 0], "vae": ["3", 0],
                         "clip_vision": ["4", 0], "image": ["1", 0], "mode": "standard",
                         "steps": steps, "text_guidance": -1.0, "audio_guidance": -1.0, "shift": 0.0,
                         "seed": seed, "resolution": "custom", "width": 64, "height": 64,
                         "color_correction": 1.0, "motion_frames": 0, "apg": False,
                         "teacache_thresh": 0.0, "max_frames": 0, "image_frames_limit": 250}},
        "9": {"class_type": "InfiniteTalkVideoCombine",
              "inputs": {"video": ["8", 0], "frame_rate": 25.0, "quality": 19,
                         "filename_prefix": prefix}},
        "12": {"class_type": "InfiniteTalkVideoCombine",        # the IMAGE + AUDIO route
               "inputs": {"images": ["8", 1], "audio": ["7", 1], "frame_rate": 25.0, "quality": 23,
                          "filename_prefix": prefix + "_images"}},
    }


class Listener:
    """Collects the host's websocket messages for our client id (progress, executing, ...)."""

    def __init__(self, host):
        self.url = f"ws://127.0.0.1:{host.port}/ws?clientId={host.client_id}"
        self.messages: list[dict] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)

    async def _listen(self) -> None:
        import aiohttp
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self.url) as ws:
                self._ready.set()
                while not self._stop.is_set():
                    try:
                        msg = await ws.receive(timeout=0.2)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        self.messages.append(json.loads(msg.data))
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        return

    def __enter__(self) -> "Listener":
        self._thread.start()
        if not self._ready.wait(20):
            raise HostError("websocket did not connect")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def of(self, kind: str, prompt_id: str | None = None) -> list[dict]:
        return [m["data"] for m in list(self.messages) if m.get("type") == kind
                and (prompt_id is None or m["data"].get("prompt_id") == prompt_id)]


@pytest.fixture(scope="module")
def e2e(host):
    names = write_models(host.models_dir)
    Image.new("RGB", (80, 72), (205, 160, 130)).save(host.input_dir / IMAGE_NAME)
    H.write_wav_int16(host.input_dir / AUDIO_NAME, _speech_like(AUDIO_SECONDS))
    return names


def _video_path(host, outputs: dict, node: str = "9") -> Path:
    saved = outputs[node]["images"][0]                 # ui.PreviewVideo -> "images" entries
    return host.output_dir / saved["subfolder"] / saved["filename"]


def _decode(path: Path) -> np.ndarray:
    from infinitetalk.media.video_file import iter_frames
    return np.concatenate(list(iter_frames(str(path))))


def _sampler_temp_files(host) -> list[Path]:
    folder = host.temp_dir / "infinitetalk"
    return sorted(folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def first_run(host, e2e):
    """Run the graph once (timed), with the websocket listening."""
    prompt = build_prompt(e2e["model"], e2e["adapter"])
    with Listener(host) as ws:
        start = time.monotonic()
        prompt_id = host.queue(prompt)
        outputs = host.wait(prompt_id, timeout=300)
        seconds = time.monotonic() - start
        time.sleep(0.5)                                # let the last messages arrive
    return {"outputs": outputs, "prompt_id": prompt_id, "ws": ws, "seconds": seconds,
            "prompt": prompt}


def test_mp4_has_h264_aac_and_the_audio_length(host, first_run):
    from infinitetalk.media.video_file import probe
    path = _video_path(host, first_run["outputs"])
    assert path.is_file() and path.stat().st_size > 0
    info = probe(path)
    assert info["video"]["codec"] == "h264"
    assert info["audio"] is not None and info["audio"]["codec"] == "aac"
    assert info["video"]["frames"] == FRAMES
    assert float(info["video"]["rate"]) == pytest.approx(25.0)
    assert (info["video"]["width"], info["video"]["height"]) == (64, 64)
    assert info["audio"]["duration"] == pytest.approx(AUDIO_SECONDS, abs=0.1)
    assert not list(path.parent.glob(".*.part"))       # no temp leftovers beside it
    from_images = probe(_video_path(host, first_run["outputs"], "12"))
    assert from_images["video"]["frames"] == FRAMES and from_images["audio"]["codec"] == "aac"
    assert _sampler_temp_files(host) == []              # the sampler's temp copy was moved out
    assert host.log_text().count("mp4: H.264 encode (crf 19) into sampler_") == 1


def _packets(path: Path) -> list[bytes]:
    import av
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(video=0) if p.size]


def test_cached_sampler_video_is_saved_again_without_its_temp_copy(host, first_run):
    """Only Video Combine's prefix changes: the host reuses the sampler's VIDEO, whose temp file the
    first save removed; the new file holds the very same H.264 stream (nothing re-encoded)."""
    prompt = copy.deepcopy(first_run["prompt"])
    prompt["9"]["inputs"]["filename_prefix"] = "e2e/again"
    encodes = host.log_text().count("mp4: H.264 encode")
    outputs = host.run(prompt, timeout=300)
    again = _video_path(host, outputs)
    assert again.name.startswith("again_")
    assert _packets(again) == _packets(_video_path(host, first_run["outputs"]))
    assert host.log_text().count("mp4: H.264 encode") == encodes


def test_progress_covers_every_step_of_every_window(first_run):
    progress = [p for p in first_run["ws"].of("progress", first_run["prompt_id"])
                if p.get("node") == "8"]
    assert progress, "the sampler sent no progress messages"
    # 2 windows x (conditioning + 1 step + decode): the bar moves before the first step and
    # reaches its end only once the last window is decoded
    assert {p["max"] for p in progress} == {6}
    assert [p["value"] for p in progress] == [1, 2, 3, 4, 5, 6]
    executed = {m.get("node") for m in first_run["ws"].of("executing", first_run["prompt_id"])}
    assert {"5", "6", "7", "8", "9", "12"} <= executed


def test_host_releases_our_model_and_same_seed_same_frames(host, first_run):
    first = _decode(_video_path(host, first_run["outputs"]))
    host.free()                                        # unload models + drop the node cache
    deadline = time.monotonic() + 30
    while "InfiniteTalk: DiT released" not in host.log_text() and time.monotonic() < deadline:
        time.sleep(0.3)
    log_text = host.log_text()
    assert "InfiniteTalk: DiT released" in log_text, host.log_tail()
    assert "Potential memory leak detected with model WanModel" not in log_text
    # the cache was dropped, so everything runs again (and the video gets the next file name)
    again = host.run(first_run["prompt"], timeout=300)
    second_path = _video_path(host, again)
    assert second_path != _video_path(host, first_run["outputs"])
    np.testing.assert_array_equal(_decode(second_path), first)


def test_models_are_cached_between_runs_and_reloaded_when_the_file_changes(host, e2e, first_run):
    log_text = host.log_text()
    assert log_text.count("umT5: loaded") == 1          # kept by the pack across prompts and /free
    assert log_text.count("wav2vec2: loaded") == 1
    graph = {"5": build_prompt(e2e["model"], e2e["adapter"])["5"],
             "10": build_prompt(e2e["model"], e2e["adapter"])["10"],
             "11": {"class_type": "PreviewAny", "inputs": {"source": ["5", 1]}}}
    graph["5"]["inputs"]["memory_budget_gb"] = 0.5     # a new graph: runs once...
    loads = lambda: host.log_text().count("InfiniteTalk: loaded ")   # noqa: E731
    before = loads()
    host.run(graph, timeout=120)
    assert loads() == before + 1
    host.run(graph, timeout=120)                        # ...then comes from the host's cache
    assert loads() == before + 1
    adapter = host.models_dir / "infinitetalk" / e2e["adapter"]
    stat = adapter.stat()
    os.utime(adapter, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    host.run(graph, timeout=120)                        # the file changed: loaded again
    assert loads() == before + 2
    # the host runs with --cpu: memory_budget_gb = 0.5 is ignored (said once), the DiT stays whole
    assert host.log_text().count("memory_budget_gb is ignored when ComfyUI runs on the CPU") == 1
    assert "streamed blocks" not in host.log_text()


def test_interrupt_mid_sampling_leaves_no_partial_output(host, e2e, first_run):
    before_out = sorted(p for p in host.output_dir.rglob("*") if p.is_file())
    before_tmp = _sampler_temp_files(host)
    prompt = build_prompt(e2e["model"], e2e["adapter"], seed=123, steps=12, prefix="e2e/stopped")
    with Listener(host) as ws:
        prompt_id = host.queue(prompt)
        deadline = time.monotonic() + 240
        while not ws.of("progress", prompt_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ws.of("progress", prompt_id), "sampling never started"
        host.interrupt()
        while time.monotonic() < deadline:
            entry = host.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                break
            time.sleep(0.3)
        time.sleep(0.3)
        kinds = [kind for kind, _ in (entry or {}).get("status", {}).get("messages", [])]
        assert "execution_interrupted" in kinds, entry
        last = max(p["value"] for p in ws.of("progress", prompt_id))
        assert last < 24                                # stopped between steps, not at the end
    assert sorted(p for p in host.output_dir.rglob("*") if p.is_file()) == before_out
    assert _sampler_temp_files(host) == before_tmp      # no .part file, no empty reservation
    assert not list(host.output_dir.rglob("stopped*"))


def test_api_prompt_is_json(e2e):
    """The graph is plain JSON (the workflows engineer reuses it): print it with -s to copy."""
    text = json.dumps(build_prompt(e2e["model"], e2e["adapter"]), indent=1, ensure_ascii=False)
    assert json.loads(text)["8"]["class_type"] == "InfiniteTalkSampler"
    assert copy.deepcopy(json.loads(text)) == build_prompt(e2e["model"], e2e["adapter"])
