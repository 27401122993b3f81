"""The real host imports the pack and lists every node with its inputs."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.host

EXPECTED = {
    "InfiniteTalkModelLoader": ({"model", "audio_adapter", "family", "precision", "memory_budget_gb"},
                                {"lora", "attention", "compile", "gpus"}),
    "InfiniteTalkLoraSelect": ({"lora", "strength"}, {"prev_lora"}),
    "InfiniteTalkTextEncode": ({"t5_model", "prompt", "negative_prompt"}, set()),
    "InfiniteTalkAudioEncode": ({"wav2vec_model", "audio_1", "mode", "normalize_loudness"}, {"audio_2"}),
    "InfiniteTalkSpeakerMask": ({"image", "method", "boxes"}, {"mask_1", "mask_2"}),
    "InfiniteTalkSampler": ({"model", "text", "audio", "vae", "clip_vision", "mode", "steps",
                             "text_guidance", "audio_guidance", "shift", "seed", "resolution", "width",
                             "height", "color_correction", "motion_frames", "apg", "teacache_thresh",
                             "max_frames", "image_frames_limit"}, {"image", "video", "masks"}),
    "InfiniteTalkVideoCombine": ({"frame_rate", "quality", "filename_prefix"},
                                 {"video", "images", "audio"}),
}
OUTPUTS = {
    "InfiniteTalkModelLoader": ["INFINITETALK_MODEL", "STRING"],
    "InfiniteTalkLoraSelect": ["INFINITETALK_LORA"],
    "InfiniteTalkTextEncode": ["INFINITETALK_TEXT"],
    "InfiniteTalkAudioEncode": ["INFINITETALK_AUDIO", "AUDIO", "INT"],
    "InfiniteTalkSpeakerMask": ["MASK", "IMAGE"],
    "InfiniteTalkSampler": ["VIDEO", "IMAGE", "INT", "STRING"],
    "InfiniteTalkVideoCombine": ["VIDEO", "STRING"],
}


def test_host_starts_without_import_failures(host):
    assert host.import_failures() == []


@pytest.fixture(scope="module")
def info(host):
    return host.object_info()


@pytest.mark.parametrize("node_id", sorted(EXPECTED))
def test_node_listed_with_inputs_and_tooltips(info, node_id):
    assert node_id in info, f"{node_id} missing from /object_info"
    node = info[node_id]
    assert node["category"] == "InfiniteTalk"
    assert node["display_name"] and not node["display_name"].startswith("InfiniteTalk" + "Sampler")
    required, optional = EXPECTED[node_id]
    assert set(node["input"]["required"]) == required
    assert set(node["input"].get("optional", {})) == optional
    for section in ("required", "optional"):
        for name, spec in node["input"].get(section, {}).items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert node["output"] == OUTPUTS[node_id]


def test_only_our_nodes_use_our_prefix(info):
    ours = {k for k in info if k.startswith("InfiniteTalk")}
    assert ours == set(EXPECTED)


def test_negative_prompt_is_the_official_default(info):
    spec = info["InfiniteTalkTextEncode"]["input"]["required"]["negative_prompt"][1]
    neg = spec["default"]
    assert neg.startswith("色调艳丽，过曝，静态") and neg.endswith("倒着走")
    # readers who do not read Chinese see what it asks the model to avoid
    assert "In English: garish colours, overexposed, static" in spec["tooltip"]
    assert "walking backwards" in spec["tooltip"]


def test_sampler_placeholders_say_what_they_mean(info):
    """0 / -1 mean 'the preset' and width/height apply to 'custom' only: the labels say so."""
    spec = {**info["InfiniteTalkSampler"]["input"]["required"]}
    labels = {name: s[1].get("display_name", name) for name, s in spec.items()}
    assert "40" in labels["steps"] and "8" in labels["steps"]
    assert "preset" in labels["text_guidance"] and "preset" in labels["audio_guidance"]
    assert "custom" in labels["width"] and "custom" in labels["height"]
    assert "0 =" in labels["max_frames"] and "0 =" in labels["shift"]


def test_para_and_add_say_which_fits_what(info):
    tip = info["InfiniteTalkAudioEncode"]["input"]["required"]["mode"][1]["tooltip"]
    assert "per-speaker tracks of ONE conversation" in tip and "two separate monologues" in tip
