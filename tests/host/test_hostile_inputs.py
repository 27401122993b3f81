"""Hostile and unlucky inputs through /prompt (issue 11), all on one host: each gets one clear error
naming the node and the input, the queue keeps serving, and no half-written file is left."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from host_server import ExecutionFailed, PromptRejected

from tiny.dit_files import write_demo_models
from tiny.host_files import write_quant_models, USER_FILES
from tiny.text_audio_files import write_wav2vec_folder

pytestmark = pytest.mark.host
BAD_NAME = b"bad\xff\x1b[2Jname.safetensors"                            # not UTF-8, with an escape


def _write_float_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    """A mono IEEE-float WAV (the wave module writes PCM only)."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
                     + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


@pytest.fixture(scope="module")
def files(host):
    models = host.models_dir
    roles = write_demo_models(models)
    write_quant_models(models)
    write_wav2vec_folder(models / "wav2vec2" / "chinese-wav2vec2-base")
    (models / "text_encoders").mkdir(parents=True, exist_ok=True)
    (models / "text_encoders" / "dummy_t5.safetensors").write_bytes(b"not read before the prompt check")
    os.makedirs(os.fsencode(models / "diffusion_models"), exist_ok=True)
    with open(os.path.join(os.fsencode(models / "diffusion_models"), BAD_NAME), "wb") as f:
        f.write(b"<html>not a model</html>" * 10)
    elsewhere = host.base_dir / "other_disk"                         # weights kept outside models/
    elsewhere.mkdir(exist_ok=True)
    lora = models / roles["lora"]
    (elsewhere / "linked_lora.safetensors").write_bytes(lora.read_bytes())
    os.symlink(elsewhere / "linked_lora.safetensors", models / "loras" / "linked_lora.safetensors")
    save_file({"diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.zeros(4, 64),
               "diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.zeros(256, 4)},
              str(models / "loras" / "wrong_size_lora.safetensors"))
    loops = models / "infinitetalk" / "loops"
    loops.mkdir(parents=True, exist_ok=True)
    for name in ("a", "b"):
        os.symlink(".", loops / name)
    (host.output_dir / "blocked").write_bytes(b"a file where a folder should be")
    Image.new("RGB", (64, 48), (200, 150, 120)).save(host.input_dir / "face.png")
    wave = (np.sin(np.arange(16000) / 5) * 0.3).astype(np.float32)
    wave[100] = np.nan
    _write_float_wav(host.input_dir / "nan.wav", wave)
    return roles


def _preview(src: str, slot: int) -> dict:
    return {"class_type": "PreviewAny", "inputs": {"source": [src, slot]}}


def _loader(model: str, lora=None) -> dict:
    node = {"class_type": "InfiniteTalkModelLoader",
            "inputs": {"model": model, "audio_adapter": "none", "family": "InfiniteTalk",
                       "precision": "fp32", "memory_budget_gb": 0.0}}
    if lora:
        node["inputs"]["lora"] = lora
    return node


def _failure(host, graph: dict, timeout: float = 120) -> str:
    with pytest.raises(ExecutionFailed) as err:
        host.run(graph, timeout=timeout)
    return err.value.exception_message


def _combine(**inputs) -> dict:
    values = {"frame_rate": 25.0, "quality": 19, "filename_prefix": "hostile/video", "images": ["1", 0]}
    values.update(inputs)
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
            "2": {"class_type": "InfiniteTalkVideoCombine", "inputs": values}}


def _options(spec: list) -> list[str]:
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def test_non_utf8_file_name_does_not_stop_the_queue(host, files):
    info = host.object_info("InfiniteTalkModelLoader")["InfiniteTalkModelLoader"]
    name = next(m for m in _options(info["input"]["required"]["model"]) if m.startswith("bad"))
    msg = _failure(host, {"1": _loader(name), "2": _preview("1", 1)})
    assert "InfiniteTalk Model Loader" in msg and "'model'" in msg and "\\x1b" in msg
    assert "\x1b" not in msg and str(host.base_dir) not in msg       # escaped; no server paths
    outputs = host.run({"1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},  # still serving
                        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}, timeout=120)
    assert outputs["2"]["images"]


def test_symlink_loops_do_not_hang_object_info(host, files):
    info = host.object_info("InfiniteTalkModelLoader")["InfiniteTalkModelLoader"]
    adapters = _options(info["input"]["optional" if "audio_adapter" not in info["input"]["required"]
                                     else "required"]["audio_adapter"])
    assert "single/infinitetalk.safetensors" in adapters


def test_symlinked_lora_is_accepted(host, files):
    outputs = host.run({"1": {"class_type": "InfiniteTalkLoraSelect",
                              "inputs": {"lora": "linked_lora.safetensors", "strength": 1.0}},
                        "2": _preview("1", 0)}, timeout=120)
    assert "2" in outputs


def test_lora_errors_name_the_lora_input_and_no_server_path(host, files):
    graph = {"1": {"class_type": "InfiniteTalkLoraSelect",
                   "inputs": {"lora": "wrong_size_lora.safetensors", "strength": 1.0}},
             "2": _loader(files["model"].removeprefix("diffusion_models/"), ["1", 0]),
             "3": _preview("2", 1)}
    graph["2"]["inputs"]["audio_adapter"] = "single/infinitetalk.safetensors"
    msg = _failure(host, graph)
    assert "InfiniteTalk Model Loader: input 'lora'" in msg and "shapes disagree" in msg
    assert str(host.base_dir) not in msg and str(host.models_dir) not in msg


def test_quantized_tiny_model_loads_quantized(host, files):
    outputs = host.run({"1": _loader(USER_FILES["int8"]), "2": _preview("1", 1)}, timeout=300)
    assert "2" in outputs
    assert "layers kept quantized" in host.log_text()


def test_non_finite_audio_names_the_input(host, files):
    graph = {"1": {"class_type": "LoadAudio", "inputs": {"audio": "nan.wav"}},
             "2": {"class_type": "InfiniteTalkAudioEncode",
                   "inputs": {"wav2vec_model": "chinese-wav2vec2-base", "audio_1": ["1", 0],
                              "mode": "para", "normalize_loudness": True}},
             "3": _preview("2", 2)}
    msg = _failure(host, graph)
    assert "InfiniteTalk Audio Encode: input 'audio_1'" in msg and "NaN or infinite" in msg


@pytest.mark.parametrize("inputs, words", [
    ({"frame_rate": 0.0}, "'frame_rate'"),
    ({"frame_rate": 0.01}, "'frame_rate'"),
    ({"filename_prefix": "hostile/a\x00b"}, "'filename_prefix'"),
    ({"filename_prefix": "hostile/a\nb"}, "'filename_prefix'"),
    ({"filename_prefix": "hostile/" + "x" * 300}, "'filename_prefix'"),
    ({"filename_prefix": "blocked/video"}, "'filename_prefix'"),
])
def test_video_combine_refuses_before_reserving_a_name(host, files, inputs, words):
    msg = _failure(host, _combine(**inputs))
    assert "InfiniteTalk Video Combine" in msg and words in msg
    folder = host.output_dir / "hostile"
    assert not folder.exists() or not any(folder.iterdir())          # no 0-byte .mp4, no .part


@pytest.mark.parametrize("boxes", ["a,b,c,d; 1,2,3,4", "nan,0,10,10; 20,0,30,10"])
def test_unreadable_boxes(host, files, boxes):
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
             "3": {"class_type": "InfiniteTalkSpeakerMask",
                   "inputs": {"image": ["1", 0], "method": "boxes", "boxes": boxes}},
             "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}}}
    msg = _failure(host, graph)
    assert "InfiniteTalk Speaker Masks: input 'boxes'" in msg


def test_lone_surrogate_in_the_prompt(host, files):
    graph = {"1": {"class_type": "InfiniteTalkTextEncode",
                   "inputs": {"t5_model": "dummy_t5.safetensors", "prompt": "a person \ud800 talks",
                              "negative_prompt": ""}},
             "2": _preview("1", 0)}
    msg = _failure(host, graph)
    assert "input 'prompt'" in msg and "surrogate" in msg


def test_motion_frames_not_4n_plus_1_is_a_validation_error(host, files):
    graph = json.loads((Path(__file__).resolve().parents[2] / "workflows_api" /
                        "infinitetalk_single.json").read_text())
    sampler = next(k for k, v in graph.items() if v["class_type"] == "InfiniteTalkSampler")
    graph[sampler]["inputs"]["motion_frames"] = 10
    with pytest.raises(PromptRejected) as err:
        host.queue(graph)
    text = " ".join(err.value.messages())
    assert "'motion_frames'" in text and "4n+1" in text
