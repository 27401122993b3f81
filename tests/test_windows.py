"""Window plan (pure) and per-window audio indices / end padding."""
import pytest
import torch

from golden import golden_cases
from infinitetalk.samplers.audio import audio_indices, mirror_index, window_audio
from infinitetalk.samplers.windows import plan_windows


def _emitted(plan):
    """Output frame indices in emission order."""
    return [w.emit_start + i for w in plan.windows for i in range(w.emit_count)]


@pytest.mark.parametrize("frames", [1, 30, 80, 81, 82, 153, 154, 1000, 1234])
def test_plan_emits_every_frame_once(frames):
    plan = plan_windows(frames)
    assert _emitted(plan) == list(range(frames))
    assert plan.total_frames == frames


def test_short_audio_one_padded_window():
    plan = plan_windows(30)
    (w,) = plan.windows
    assert (w.start, w.end, w.emit_offset, w.emit_count) == (0, 81, 0, 30)
    assert w.audio_length == 84  # end + 3, mirrored past the audio


def test_exact_81_frames_one_window():
    (w,) = plan_windows(81).windows
    assert (w.end, w.emit_count, w.audio_length) == (81, 81, 84)


def test_official_chunking_long_audio():
    plan = plan_windows(1000)
    # official streaming: stops at the first window k >= 1 with 72k + 81 >= 1000 -> k = 13
    assert len(plan) == 14
    assert [w.start for w in plan.windows[:3]] == [0, 72, 144]
    w1 = plan.windows[1]
    assert (w1.context_frames, w1.emit_offset, w1.emit_count) == (9, 9, 72)
    last = plan.windows[-1]
    assert last.end == 13 * 72 + 81 and last.audio_length == last.end + 3
    assert all(w.audio_length == 1000 for w in plan.windows[:-1])
    assert last.emit_count == 1000 - (last.start + 9)
    # audio of 82..153 frames still takes two windows (the reference always runs window 1)
    assert len(plan_windows(82)) == 2 and len(plan_windows(153)) == 2 and len(plan_windows(154)) == 3


def test_max_frames_caps_without_padding():
    plan = plan_windows(1000, max_frames=200)
    assert plan.total_frames == 200 and _emitted(plan) == list(range(200))
    assert plan.windows[-1].audio_length == 1000  # end 225 < 1000: no padding


def test_video_reference_frames_and_multitalk():
    plan = plan_windows(400, source_frames=100)
    assert [w.reference_frame for w in plan.windows] == [0, 72, 99, 99, 99, 99]
    mt = plan_windows(400, family="multitalk")
    assert mt.motion_frames == 25 and [w.start for w in mt.windows[:3]] == [0, 56, 112]
    assert mt.windows[0].reference_frame == 0 and mt.windows[1].reference_frame is None
    assert _emitted(mt) == list(range(400))


def test_plan_errors():
    with pytest.raises(ValueError, match="4n\\+1"):
        plan_windows(100, frame_num=80)
    with pytest.raises(ValueError, match="family"):
        plan_windows(100, family="wan")
    with pytest.raises(ValueError, match="no new frames"):
        plan_windows(100, motion_frames=81)


@pytest.mark.parametrize("case", golden_cases("loop_single_cfg3") + golden_cases("loop_multi_cfg3"))
def test_audio_indices_golden_loop(case):
    inp = case.inputs()
    assert torch.equal(audio_indices(0, 9, inp["audio_full"].shape[1]), inp["dit_audio_indices"])


@pytest.mark.parametrize("case", golden_cases("audio_features"))
def test_audio_windows_golden_features(case):
    out = case.outputs()
    emb = out["embedding"][None]
    for key in out:
        if key.endswith(".indices"):
            start = int(key.split(".")[0].removeprefix("window_start"))
            idx = audio_indices(start, 9, emb.shape[1])
            assert torch.equal(idx, out[key]), key
            prefix = key.removesuffix(".indices")
            assert torch.equal(window_audio(emb, start, 9, emb.shape[1]), out[f"{prefix}.audio"]), prefix


def test_end_padding_equals_reversed_tail():
    emb = torch.randn(1, 100, 12, 8)
    end = 13 + 81 + 9  # a window reaching past the audio
    miss = end - 100 + 3
    padded = torch.cat([emb, torch.flip(emb[:, -miss:], dims=[1])], dim=1)  # the reference's extension
    start = end - 81
    expected = padded[:, audio_indices(start, 81, padded.shape[1])]
    assert torch.equal(window_audio(emb, start, 81, end + 3), expected)
    # short audio keeps reflecting
    assert mirror_index(torch.arange(12), 4).tolist() == [0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2, 3]
