"""Every bundled workflow runs on the real host with tiny models and yields a playable mp4.

The API graphs in workflows_api/ are queued as shipped (steps, image_frames_limit, max_frames,
Video Combine settings), with only the model files tiny and the frame small, on real-length speech
(>= 40 s; two speakers: a conversation split per speaker; see tiny/speech_inputs.py). The mp4 is
checked with PyAV: H.264 video, AAC audio, frame count, duration, the user's soundtrack at its own
rate and channels, sample-aligned; the host log shows exactly one H.264 encode. Also: the UI twins
are in sync with the API graphs, the host lists them as templates, and docs/api_client.py works.
"""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest

from infinitetalk.media.mp4_copy import read_soundtrack
from host_server import PromptRejected
from tiny.host_files import (REPO, TINY_SAMPLER, WORKFLOWS_API, copy_demo_inputs, load_api_workflow,
                             tiny_graph, write_user_models)
from tiny.speech_inputs import conversation, long_speech, read_wav, video_frames

pytestmark = pytest.mark.host

FPS = 25
SPEECH_SECONDS = 40.0                # every bundled workflow: >= 40 s of speech (two speakers: a
LONG_SECONDS = 60.0                  # conversation split per speaker); the long one: 60 s
SMALL_FRAME = {"resolution": "custom", "width": 32, "height": 32}   # all else as shipped
WORKFLOWS = sorted(p.stem for p in WORKFLOWS_API.glob("*.json"))
SCENARIOS = ("single", "multi", "int8", "fp8", "fusionx", "lora", "dubbing", "long")


@pytest.fixture(scope="module")
def tiny_host(host):
    """The session host with every tiny model the workflows name, and the demo inputs."""
    write_user_models(host.models_dir)
    copy_demo_inputs(host.input_dir)
    return host


@pytest.fixture(scope="module")
def real_speech(tiny_host) -> dict[str, str]:
    """Real-length inputs in input/ and the demo file each one replaces in the graphs."""
    folder = tiny_host.input_dir
    long_speech(folder / "test_speech.wav", SPEECH_SECONDS, rate=48000)
    long_speech(folder / "test_long_speech.wav", LONG_SECONDS, rate=44100)
    man, woman = conversation(folder, SPEECH_SECONDS, rate=44100, stem="test_conversation")
    return {"single_1.wav": "test_speech.wav", "long_speech.wav": "test_long_speech.wav",
            "multi_1-man.wav": man.name, "multi_1-woman.wav": woman.name}


def output_mp4(host, outputs: dict) -> Path:
    """The file the workflow's output node reported (``ui.images`` of Video Combine)."""
    files = [f for node in outputs.values() for key in ("images", "gifs", "videos")
             for f in node.get(key, []) if f.get("filename", "").endswith(".mp4")]
    assert len(files) == 1, f"expected one mp4 in the outputs, got {outputs}"
    f = files[0]
    return host.output_dir / f.get("subfolder", "") / f["filename"]


def probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = sum(1 for _ in c.decode(video=0))
        return {"vcodec": v.codec_context.name, "acodec": a.codec_context.name, "frames": frames,
                "fps": float(v.average_rate), "size": (v.codec_context.width, v.codec_context.height),
                "duration": float(c.duration / 1e6), "audio_rate": a.codec_context.sample_rate}


def check_mp4(path: Path, frames: int, size=(TINY_SAMPLER["width"], TINY_SAMPLER["height"])) -> dict:
    assert path.is_file(), f"{path} was reported but does not exist"
    info = probe(path)
    assert info["vcodec"] == "h264" and info["acodec"] == "aac", info
    assert info["frames"] == frames and info["fps"] == FPS, info
    assert info["size"] == size, info
    assert abs(info["duration"] - frames / FPS) < 0.15, info
    return info


def test_every_scenario_has_a_workflow():
    for word in SCENARIOS:
        assert any(word in name for name in WORKFLOWS), f"no workflows_api/*{word}*.json"
    ui = sorted(p.stem for p in (REPO / "example_workflows").glob("*.json"))
    assert ui == WORKFLOWS, "every API graph needs its UI twin (run .ci/make_workflows.py)"


def test_ui_workflows_are_generated_from_the_api_graphs(host):
    res = subprocess.run([sys.executable, str(REPO / ".ci" / "make_workflows.py"), "--url", host.url, "--check"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def test_host_lists_them_as_templates(host):
    with urllib.request.urlopen(host.url + "/workflow_templates", timeout=30) as resp:
        listed = json.loads(resp.read())
    assert sorted(listed.get("comfyui-infinitetalk", [])) == WORKFLOWS, listed
    with urllib.request.urlopen(f"{host.url}/api/workflow_templates/comfyui-infinitetalk/"
                                f"{WORKFLOWS[0]}.json", timeout=30) as resp:
        assert json.loads(resp.read())["nodes"]


def _log_since(host, start: int) -> str:
    return host.log_text()[start:]


def _expected_soundtrack(host, graph: dict) -> tuple[np.ndarray, int, str, list[Path]]:
    """What must be in the mp4: the loaded clips, mixed (para) or one after the other (add)."""
    enc = next(n["inputs"] for n in graph.values() if n["class_type"] == "InfiniteTalkAudioEncode")
    loads = [graph[enc[key][0]]["inputs"]["audio"] for key in ("audio_1", "audio_2") if key in enc]
    clips = [read_wav(host.input_dir / name) for name in loads]
    rate = clips[0][1]
    assert all(r == rate for _, r in clips)
    if enc["mode"] == "add":
        return (np.concatenate([c for c, _ in clips], axis=1), rate, "add",
                [host.input_dir / name for name in loads])
    out = np.zeros((clips[0][0].shape[0], max(c.shape[1] for c, _ in clips)), np.float32)
    for c, _ in clips:
        out[:, :c.shape[1]] += c
    return out, rate, enc["mode"], [host.input_dir / name for name in loads]


def check_soundtrack(path: Path, want: np.ndarray, rate: int, frames: int) -> None:
    """The user's audio at its own rate and channels, sample-aligned (AAC-close), video-long."""
    got, got_rate = read_soundtrack(str(path))
    assert got_rate == rate and got.shape[0] == want.shape[0], (got_rate, got.shape, rate)
    assert abs(got.shape[1] - frames / FPS * rate) <= 2048, (got.shape, frames)
    n = min(got.shape[1], want.shape[1]) - 4096
    a, b = got[:, 2048:n], want[:, 2048:n]
    lags = range(-64, 65)
    corr = [float(np.dot(a[0, 64:-64], b[0, 64 + lag:b.shape[1] - 64 + lag])) for lag in lags]
    assert lags[int(np.argmax(corr))] == 0, "the soundtrack is shifted against the input"
    rel = float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))
    assert rel < 0.1, f"the soundtrack differs from the input (relative RMS error {rel:.3f})"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_as_shipped_on_real_length_speech(tiny_host, real_speech, name):
    """Shipped settings (steps, image_frames_limit, max_frames, Video Combine), tiny models and a
    small frame, on >= 40 s of speech: the whole audio in the mp4, the user's soundtrack in it,
    one H.264 encode, no temp copy left behind."""
    graph = tiny_graph(load_api_workflow(name), sampler=SMALL_FRAME, inputs=real_speech)
    start = len(tiny_host.log_text())
    temp = tiny_host.temp_dir / "infinitetalk"
    temp_before = sorted(temp.iterdir()) if temp.exists() else []
    outputs = tiny_host.run(graph, timeout=1500)
    path = output_mp4(tiny_host, outputs)
    sampler = next(n["inputs"] for n in graph.values() if n["class_type"] == "InfiniteTalkSampler")
    want, rate, mode, files = _expected_soundtrack(tiny_host, graph)
    frames = video_frames(files, mode)
    assert frames >= 40 * FPS
    check_mp4(path, frames=frames, size=(sampler["width"], sampler["height"]))
    check_soundtrack(path, want, rate, frames)
    log = _log_since(tiny_host, start)
    assert log.count("mp4: H.264 encode") == 1, log[-3000:]
    assert "copied stream by stream" in log
    assert (sorted(temp.iterdir()) if temp.exists() else []) == temp_before
    if "dubbing" in name:                  # the 3 s demo clip under 40 s of speech: said in the
        assert "its last frame is held for" in log         # log and on the page (PreviewAny)
        shown = [t for node in outputs.values() for t in node.get("text", [])]
        assert any("its last frame is held for" in t for t in shown), outputs


def test_teacache_and_one_pass_guidance_through_the_host(tiny_host):
    """teacache_thresh on past its 5-step warm-up and both guidance scales 1 (one DiT pass per step): the
    sampler's block_cache reaches the loaded DiT through the host, and the mp4 comes out."""
    graph = tiny_graph(load_api_workflow("infinitetalk_single"),
                       sampler={**TINY_SAMPLER, "steps": 7, "text_guidance": 1.0, "audio_guidance": 1.0,
                                "teacache_thresh": 0.2, "max_frames": 17})
    path = output_mp4(tiny_host, tiny_host.run(graph, timeout=600))
    check_mp4(path, frames=17)
    log = tiny_host.log_text()
    assert "(7 steps each, 1 DiT passes per step)" in log
    assert "TeaCache (threshold 0.2) skipped the blocks of" in log


def test_old_step_cache_input_is_refused_by_name(tiny_host):
    """API graphs saved before the rename: one clear rejection naming the new input (UI workflows keep
    working: widget values are stored by position, and the value keeps its meaning)."""
    graph = tiny_graph(load_api_workflow("infinitetalk_single"))
    sampler = next(n["inputs"] for n in graph.values() if n["class_type"] == "InfiniteTalkSampler")
    sampler["step_cache"] = sampler.pop("teacache_thresh")
    with pytest.raises(PromptRejected) as err:
        tiny_host.queue(graph)
    assert any("teacache_thresh" in m for m in err.value.messages()), err.value.messages()


def test_api_client_uploads_queues_and_reports_the_mp4(tiny_host, tmp_path):
    """docs/api_client.py as a user runs it: upload, substitute, queue, follow /ws, print the path."""
    cmd = [sys.executable, str(REPO / "docs" / "api_client.py"), "--server", tiny_host.url,
           "--workflow", str(WORKFLOWS_API / "infinitetalk_single.json"),
           "--image", str(REPO / "demo" / "single_ref_image.png"),
           "--audio", str(REPO / "demo" / "single_1.wav"),
           "--prompt", "A woman sings.", "--seed", "7", "--download", str(tmp_path)]
    for key, value in TINY_SAMPLER.items():
        cmd += ["--set", f"InfiniteTalkSampler.{key}={value}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.strip().splitlines()
    server_path, local = Path(lines[-2]), Path(lines[-1])
    assert (tiny_host.output_dir / server_path).is_file(), res.stdout
    assert local.parent == tmp_path
    check_mp4(local, frames=TINY_SAMPLER["max_frames"])
    assert "progress" in res.stderr, res.stderr      # websocket progress was followed and logged
