"""Window plan (pure) and per-window audio indices / end padding."""
import pytest
import torch

from golden import golden_cases
from infinitetalk.samplers.audio_windows import audio_indices, mirror_index, frame_audio_windows
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
    frames = case.case["sampling"]["frame_num"]
    assert torch.equal(audio_indices(0, frames, inp["audio_full"].shape[1]), inp["dit_audio_indices"])


@pytest.mark.parametrize("case", golden_cases("audio_features"))
def test_audio_windows_golden_features(case):
    out = case.outputs()
    emb = out["embedding"][None]
    clip = case.case["windowing"]["clip_len"]
    for key in out:
        if key.endswith(".indices"):
            start = int(key.split(".")[0].removeprefix("window_start"))
            idx = audio_indices(start, clip, emb.shape[1])
            assert torch.equal(idx, out[key]), key
            prefix = key.removesuffix(".indices")
            assert torch.equal(frame_audio_windows(emb, start, clip, emb.shape[1]), out[f"{prefix}.audio"]), prefix


def test_end_padding_equals_reversed_tail():
    emb = torch.randn(1, 100, 12, 8)
    end = 13 + 81 + 9  # a window reaching past the audio
    miss = end - 100 + 3
    padded = torch.cat([emb, torch.flip(emb[:, -miss:], dims=[1])], dim=1)  # the reference's extension
    start = end - 81
    expected = padded[:, audio_indices(start, 81, padded.shape[1])]
    assert torch.equal(frame_audio_windows(emb, start, 81, end + 3), expected)
    # short audio keeps reflecting
    assert mirror_index(torch.arange(12), 4).tolist() == [0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2, 3]


STREAM_CASES = (golden_cases("loop_stream_single") + golden_cases("loop_stream_dubbing")
                + golden_cases("loop_stream_multi"))


def stream_plan(case):
    """Our plan for a loop_stream case, from the case's own sizes."""
    s, inp = case.case["sampling"], case.inputs()
    video = inp.get("cond_video_u8")
    return plan_windows(min(s["audio_len"]), frame_num=s["frame_num"], motion_frames=s["motion_frame"],
                        max_frames=s["max_frames_num"], source_frames=None if video is None else len(video))


@pytest.mark.parametrize("case", STREAM_CASES)
def test_stream_windows_golden(case):
    c, inp, out = case.case, case.inputs(), case.outputs()
    plan = stream_plan(case)
    assert len(plan) == c["n_windows"] == len(c["windows"])
    assert plan.total_frames == c["final_frames"]
    speakers = [inp[f"audio_emb_person{i + 1}"] for i in range(c["sampling"]["human_num"])]
    for w, want in zip(plan.windows, c["windows"]):
        assert (w.start, w.end) == (want["audio_start_idx"], want["audio_end_idx"])
        assert (w.index == len(plan) - 1) == want["is_last"]
        assert [w.audio_length] * len(speakers) == want["audio_len_used"]
        assert [w.audio_length > len(a) for a in speakers] == want["audio_padded_in_this_window"]
        assert w.reference_frame == want["reference_frame_used"]
        assert w.emit_offset == want["emitted_window_frames"][0]
        begin, end = want["emitted_global_frames"]
        assert (w.emit_start, w.emit_start + w.emit_count) == (begin, min(end, c["final_frames"]))
        idx = audio_indices(w.start, plan.frame_num, w.audio_length)
        assert torch.equal(idx, out[f"w{w.index}.audio_indices"])
        for a, padded_len in zip(speakers, c["padded_audio_lens"]):
            miss = padded_len - len(a)  # the reference's padding: the reversed tail appended once
            padded = torch.cat([a, torch.flip(a[len(a) - miss:], dims=[0])]) if miss > 0 else a
            got = frame_audio_windows(a[None], w.start, plan.frame_num, w.audio_length)[0]
            assert torch.equal(got, padded[idx])
