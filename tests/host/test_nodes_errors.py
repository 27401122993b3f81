"""Bad inputs sent through /prompt come back as clear node errors (validation or execution)."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from host_server import ExecutionFailed, PromptRejected

from tiny.dit_files import write_demo_models
from tiny.host_files import write_wav_int16
from tiny.text_audio_files import write_wav2vec_folder

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def files(host):
    roles = write_demo_models(host.models_dir)
    write_wav2vec_folder(host.models_dir / "wav2vec2" / "chinese-wav2vec2-base")
    # a wav2vec2 weight file dropped into the diffusion model slot
    wrong = host.models_dir / "diffusion_models" / "not_a_dit.safetensors"
    src = host.models_dir / "wav2vec2" / "chinese-wav2vec2-base" / "model.safetensors"
    wrong.write_bytes(src.read_bytes())
    write_wav_int16(host.input_dir / "silent.wav", np.zeros(16000, np.int16))
    write_wav_int16(host.input_dir / "short.wav", (np.sin(np.arange(400) / 5) * 8000).astype(np.int16))
    Image.new("RGB", (64, 48), (200, 150, 120)).save(host.input_dir / "face.png")
    Image.new("RGBA", (32, 32), (0, 0, 0, 128)).save(host.input_dir / "small_mask.png")
    return roles


def _options(spec: list) -> list[str]:
    """Combo choices in either object_info style: [[...], {}] or ["COMBO", {"options": [...]}]."""
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def _preview(src: str, slot: int) -> dict:
    return {"class_type": "PreviewAny", "inputs": {"source": [src, slot]}}


def _loader(model: str, adapter: str = "none") -> dict:
    return {"class_type": "InfiniteTalkModelLoader",
            "inputs": {"model": model, "audio_adapter": adapter, "family": "InfiniteTalk",
                       "precision": "fp32", "memory_budget_gb": 0.0}}


def test_object_info_lists_shard_index_and_hf_folder(host, files):
    info = host.object_info("InfiniteTalkModelLoader")["InfiniteTalkModelLoader"]
    models = _options(info["input"]["required"]["model"])
    assert files["model"].removeprefix("diffusion_models/") in models
    assert not any("-00001-of-" in m for m in models)              # shards hidden behind their index
    adapters = _options(info["input"]["required"]["audio_adapter"])
    assert "single/infinitetalk.safetensors" in adapters
    wav = host.object_info("InfiniteTalkAudioEncode")["InfiniteTalkAudioEncode"]
    assert "chinese-wav2vec2-base" in _options(wav["input"]["required"]["wav2vec_model"])


def test_missing_model_file_is_a_validation_error(host, files):
    with pytest.raises(PromptRejected) as err:
        host.queue({"1": _loader("missing.safetensors"), "2": _preview("1", 1)})
    text = " ".join(err.value.messages())
    assert "missing.safetensors" in text
    assert "1" in err.value.node_errors


def test_wrong_file_in_the_model_slot(host, files):
    with pytest.raises(ExecutionFailed) as err:
        host.run({"1": _loader("not_a_dit.safetensors"), "2": _preview("1", 1)}, timeout=120)
    msg = err.value.exception_message
    assert err.value.node_type == "InfiniteTalkModelLoader"
    assert "InfiniteTalk Model Loader" in msg and "'model'" in msg


def _audio_graph(name: str) -> dict:
    return {"1": {"class_type": "LoadAudio", "inputs": {"audio": name}},
            "2": {"class_type": "InfiniteTalkAudioEncode",
                  "inputs": {"wav2vec_model": "chinese-wav2vec2-base", "audio_1": ["1", 0],
                             "mode": "para", "normalize_loudness": True}},
            "3": _preview("2", 2)}


@pytest.mark.parametrize("name, words", [("silent.wav", "silent"), ("short.wav", "at least")])
def test_silent_or_too_short_audio(host, files, name, words):
    with pytest.raises(ExecutionFailed) as err:
        host.run(_audio_graph(name), timeout=120)
    msg = err.value.exception_message
    assert "InfiniteTalk Audio Encode" in msg and "'audio_1'" in msg and words in msg


def test_mask_size_mismatch(host, files):
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
             "2": {"class_type": "LoadImage", "inputs": {"image": "small_mask.png"}},
             "3": {"class_type": "InfiniteTalkSpeakerMask",
                   "inputs": {"image": ["1", 0], "method": "masks", "boxes": "",
                              "mask_1": ["2", 1], "mask_2": ["2", 1]}},
             "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}}}
    with pytest.raises(ExecutionFailed) as err:
        host.run(graph, timeout=120)
    msg = err.value.exception_message
    assert "'mask_1'" in msg and "32x32" in msg and "64x48" in msg


def test_bad_boxes_text(host, files):
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
             "3": {"class_type": "InfiniteTalkSpeakerMask",
                   "inputs": {"image": ["1", 0], "method": "boxes", "boxes": "1,2,3"}},
             "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}}}
    with pytest.raises(ExecutionFailed) as err:
        host.run(graph, timeout=120)
    assert "'boxes'" in err.value.exception_message


def test_halves_masks_run(host, files):
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
             "3": {"class_type": "InfiniteTalkSpeakerMask",
                   "inputs": {"image": ["1", 0], "method": "halves", "boxes": ""}},
             "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}}}
    outputs = host.run(graph, timeout=120)
    assert outputs["4"]["images"]
