"""What the nodes do, without the host (runs/, samplers/settings.py, media/video_export.py): each
refusal names the input at fault (errors.InputError.input) before anything is loaded or written."""
from __future__ import annotations

import types

import pytest
import torch

from infinitetalk.errors import InputError
from infinitetalk.media.video_export import export_mp4
from infinitetalk.runs import encode_audio, encode_text, sample_video, speaker_masks
from infinitetalk.samplers.settings import from_node_inputs

NODE_DEFAULTS = dict(mode="standard", steps=0, text_guidance=-1.0, audio_guidance=-1.0, shift=0.0, seed=42,
                     resolution="480p", width=832, height=480, color_correction=1.0, motion_frames=0,
                     apg=False, teacache_thresh=0.0, max_frames=0)


def settings(**over):
    return from_node_inputs("InfiniteTalk", "cpu", torch.float32, **{**NODE_DEFAULTS, **over})


def blamed(call, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as err:
        call(*args, **kwargs)
    return err.value


# ------------------------------------------------------------------ sampler settings
def test_node_defaults_are_the_presets():
    s = settings()
    assert (s.steps, s.text_scale, s.audio_scale, s.shift, s.family) == (40, 5.0, 4.0, 7.0, "infinitetalk")
    assert s.motion_frames is None and s.max_frames is None and s.size is None
    fast = settings(mode="fast", resolution="720p")
    assert (fast.steps, fast.text_scale, fast.audio_scale, fast.shift, fast.resolution) == (8, 1.0, 2.0, 2.0, "720p")


def test_node_overrides():
    s = settings(steps=12, text_guidance=0.0, audio_guidance=1.0, shift=5.0, motion_frames=5, max_frames=100,
                 resolution="custom", width=640, height=352)
    assert (s.steps, s.text_scale, s.audio_scale, s.shift, s.motion_frames, s.max_frames) == (12, 0.0, 1.0, 5.0, 5, 100)
    assert s.size == (352, 640) and s.resolution == "480p"


@pytest.mark.parametrize("over, name", [({"motion_frames": 6}, "motion_frames"),
                                        ({"resolution": "custom", "width": 650}, "width"),
                                        ({"mode": "fast", "steps": 12}, "steps")])
def test_bad_settings_blame_their_input(over, name):
    assert blamed(settings, **over).input == name


# ------------------------------------------------------------------ speaker masks
IMAGE = torch.rand(1, 48, 64, 3)


def test_mask_methods():
    masks, preview = speaker_masks.build(IMAGE, "halves", "")
    assert masks.shape == (3, 48, 64) and preview.shape == (1, 48, 64, 3)
    masks, _ = speaker_masks.build(IMAGE, "boxes", "40,0,64,48; 0,0,20,48")     # sorted left to right
    assert masks[0, :, :20].all() and masks[1, :, 40:].all()


@pytest.mark.parametrize("method, boxes, mask, name", [
    ("boxes", "1,2,3", None, "boxes"), ("boxes", "0,0,10,10", None, "boxes"),
    ("boxes", "0,0,10,10; 20,0,90,10", None, "boxes"), ("boxes", "5,5,5,9; 0,0,4,4", None, "boxes"),
    ("masks", "", None, "mask_1"), ("masks", "", torch.ones(1, 32, 32), "mask_1"), ("other", "", None, "method")])
def test_bad_mask_inputs_blame_their_input(method, boxes, mask, name):
    assert blamed(speaker_masks.build, IMAGE, method, boxes, mask, mask).input == name


# ------------------------------------------------------------------ encoders
def test_lone_surrogate_blames_its_prompt():
    err = blamed(encode_text.encode_text, None, "t5.pth", "fine", "half \ud83d emoji")
    assert err.input == "negative_prompt" and "character 5" in str(err)


@pytest.mark.parametrize("audio_1, name", [({"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}, "audio_1"),
                                           ("not audio", "audio_1")])
def test_bad_audio_is_refused_before_loading(monkeypatch, audio_1, name):
    monkeypatch.setattr(encode_audio.kept_encoders, "load_speech_model",
                        lambda *a: pytest.fail("loaded although the audio is bad"))
    assert blamed(encode_audio.encode_audio, None, "w2v", audio_1, None, "para", True).input == name


def test_second_speaker_is_blamed_as_audio_2(monkeypatch):
    monkeypatch.setattr(encode_audio.kept_encoders, "load_speech_model", lambda *a: pytest.fail("loaded"))
    speech = {"waveform": torch.randn(1, 1, 16000) * 0.1, "sample_rate": 16000}
    short = {"waveform": torch.randn(1, 1, 100) * 0.1, "sample_rate": 16000}
    err = blamed(encode_audio.encode_audio, None, "w2v", speech, short, "para", True)
    assert err.input == "audio_2" and "at least" in str(err)


# ------------------------------------------------------------------ sampler run
def test_reference_and_masks_checks():
    assert blamed(sample_video.reference_of, None, None, 81).input == "image"
    ref, notes = sample_video.reference_of(IMAGE.repeat(2, 1, 1, 1), None, 81)
    assert ref.shape == (48, 64, 3) and notes == []
    assert blamed(sample_video.check_masks, torch.ones(2, 48, 64), IMAGE).input == "masks"
    assert blamed(sample_video.check_masks, torch.ones(3, 40, 64), IMAGE).input == "masks"
    sample_video.check_masks(torch.ones(3, 48, 64), IMAGE)


def test_progress_counts_conditioning_steps_and_decode():
    seen = []
    progress = sample_video.Progress(2, 3, lambda total: (lambda done, t: seen.append((done, t))))
    encode, decode = progress.wrap(lambda f: f, lambda latent: latent)
    for window in range(2):
        encode(0)
        encode(0)                                    # a second encode in the window counts once
        for step in range(1, 4):
            progress.on_step(window * 3 + step, 6)
        decode(0)
    assert seen[-1] == (10, 10) and [d for d, _ in seen] == sorted(d for d, _ in seen)


# ------------------------------------------------------------------ video export
@pytest.mark.parametrize("kwargs, name", [
    ({"frame_rate": 0.0}, "frame_rate"), ({"frame_rate": 0.5}, "frame_rate"),
    ({"filename_prefix": "../outside/v"}, "filename_prefix"), ({"filename_prefix": "a\nb"}, "filename_prefix"),
    ({"filename_prefix": "x" * 201}, "filename_prefix"), ({"images": None}, "video")])
def test_export_refuses_before_reserving_a_name(tmp_path, kwargs, name):
    args = {"video": None, "images": torch.rand(3, 32, 32, 3), "audio": None, "frame_rate": 25.0, "quality": 19,
            "filename_prefix": "InfiniteTalk/video", "output_dir": str(tmp_path)}
    assert blamed(export_mp4, **{**args, **kwargs}).input == name
    assert list(tmp_path.rglob("*")) == []


def test_export_writes_frames_under_the_next_free_name(tmp_path):
    frames = torch.rand(5, 32, 32, 3)
    first = export_mp4(None, frames, None, 25.0, 19, "clips/v", str(tmp_path))
    second = export_mp4(None, frames, None, 25.0, 19, "clips/v", str(tmp_path))
    assert first != second and all(p.startswith(str(tmp_path / "clips")) for p in (first, second))


def test_a_gone_sampler_video_is_refused(tmp_path):
    video = types.SimpleNamespace(path=str(tmp_path / "gone.mp4"), crf=19, get_frame_rate=lambda: 25.0)
    err = blamed(export_mp4, video, None, None, 25.0, 19, "v", str(tmp_path), sampler_video=True)
    assert err.input == "video" and "no longer exists" in str(err)
