"""Every bundled workflow runs on the real host with tiny models and yields a playable mp4.

The API graphs in workflows_api/ are queued as users' scripts would, with only the sampler's cost
knobs (steps, size, max_frames) and, for the 'long' scenario, the audio file replaced. The mp4 is
checked with PyAV: H.264 video, AAC audio, frame count, duration. Also: the UI twins are in sync
with the API graphs, the host lists them as templates, and docs/api_client.py works end to end.
"""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import wave
from pathlib import Path

import av
import pytest

from .server import PromptRejected
from tiny.host_files import (REPO, TINY_SAMPLER, WORKFLOWS_API, copy_demo_inputs, load_api_workflow,
                             tiny_graph, write_user_models)

pytestmark = pytest.mark.host

FPS = 25
DEMO_SECONDS = 4.0                   # demo/*.wav
LONG_SECONDS = 6.0                   # > 81 frames: two windows
WORKFLOWS = sorted(p.stem for p in WORKFLOWS_API.glob("*.json"))
SCENARIOS = ("single", "multi", "int8", "fp8", "fusionx", "lora", "dubbing", "long")


@pytest.fixture(scope="module")
def tiny_host(host):
    """The session host with every tiny model the workflows name, and the demo inputs."""
    write_user_models(host.models_dir)
    copy_demo_inputs(host.input_dir)
    _loop_wav(REPO / "demo" / "single_1.wav", host.input_dir / "test_long_speech.wav", LONG_SECONDS)
    return host


def _loop_wav(src: Path, dst: Path, seconds: float) -> None:
    with wave.open(str(src)) as r:
        params, data = r.getparams(), r.readframes(r.getnframes())
    need = int(seconds * params.framerate) * params.sampwidth * params.nchannels
    with wave.open(str(dst), "wb") as w:
        w.setparams(params)
        w.writeframes((data * (need // len(data) + 1))[:need])


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


@pytest.mark.parametrize("name", [n for n in WORKFLOWS if "long" not in n])
def test_workflow_makes_an_mp4(tiny_host, name):
    graph = tiny_graph(load_api_workflow(name))
    path = output_mp4(tiny_host, tiny_host.run(graph, timeout=600))
    sampler = next(n["inputs"] for n in graph.values() if n["class_type"] == "InfiniteTalkSampler")
    check_mp4(path, frames=TINY_SAMPLER["max_frames"], size=(sampler["width"], sampler["height"]))


def test_long_workflow_covers_the_whole_audio(tiny_host):
    """No max_frames: two 81-frame windows (9 shared) make exactly the audio's 150 frames."""
    graph = tiny_graph(load_api_workflow("infinitetalk_long_audio"),
                       sampler={**TINY_SAMPLER, "max_frames": 0},
                       inputs={"long_speech.wav": "test_long_speech.wav"})
    path = output_mp4(tiny_host, tiny_host.run(graph, timeout=600))
    check_mp4(path, frames=int(LONG_SECONDS * FPS))


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
