"""Lab colour correction."""
import pytest
import torch

from golden import assert_close
from infinitetalk.samplers.color import lab_to_rgb, match_colors, rgb_to_lab


def test_lab_known_values_and_round_trip():
    white, black = torch.ones(3), torch.zeros(3)
    assert_close(rgb_to_lab(white), torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64), 1e-2, "white")  # the sRGB matrix rows sum to ~D65, not exactly
    assert_close(rgb_to_lab(black), torch.zeros(3, dtype=torch.float64), 1e-9, "black")
    red = rgb_to_lab(torch.tensor([1.0, 0.0, 0.0]))  # sRGB red, D65: L 53.24, a 80.09, b 67.20
    assert_close(red, torch.tensor([53.24, 80.09, 67.20], dtype=torch.float64), 0.02, "red")
    rgb = torch.rand(50, 3, dtype=torch.float64)
    assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, 1e-6, "round trip")


def test_match_transfers_lab_statistics():
    torch.manual_seed(0)
    ref = torch.rand(16, 16, 3) * 0.5 + 0.25
    frames = (torch.rand(3, 16, 16, 3) * 0.3 + 0.1).clamp(0, 1)
    out = match_colors(frames, ref, 1.0)
    ref_lab = rgb_to_lab(ref).reshape(-1, 3)
    for frame in out:
        lab = rgb_to_lab(frame).reshape(-1, 3)
        assert_close(lab.mean(0), ref_lab.mean(0), 1.5, "mean")  # clipping to 0..1 moves it slightly
    assert torch.equal(match_colors(frames, ref, 0.0), frames)
    half = match_colors(frames, ref, 0.5)
    assert_close(half, 0.5 * frames + 0.5 * out, 1e-5, "blend")
    with pytest.raises(ValueError, match="0..1"):
        match_colors(frames, ref, 1.5)


def test_flat_frame_takes_reference_mean():
    ref = torch.rand(8, 8, 3)
    flat = torch.full((1, 8, 8, 3), 0.3)
    out = match_colors(flat, ref, 1.0)
    assert out.shape == flat.shape and torch.isfinite(out).all()
    assert_close(rgb_to_lab(out[0]).reshape(-1, 3).mean(0), rgb_to_lab(ref).reshape(-1, 3).mean(0), 2.0, "flat")
