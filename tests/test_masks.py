"""Speaker routing masks."""
import pytest
import torch

from golden import golden_cases
from infinitetalk.samplers.masks import (MaskError, box_masks, check_token_coverage, halves_masks, speaker_masks,
                                         to_latent, user_masks)


@pytest.mark.parametrize("case", golden_cases("loop_multi_cfg3") + golden_cases("loop_single_cfg3"))
def test_golden_latent_masks(case):
    s = case.case["sampling"]
    got = speaker_masks(s["human_num"], s["pixel_h"], s["pixel_w"], s["pixel_h"], s["pixel_w"])
    assert torch.equal(got, case.inputs()["dit_ref_target_masks"])


def test_halves_rule_at_pixel_size():
    m = halves_masks(64, 96)
    assert m.shape == (3, 64, 96)
    rows = m[0].any(1).nonzero().flatten()
    assert (rows.min().item(), rows.max().item()) == (3, 59)        # [floor(0.05h), floor(0.95h))
    cols1, cols2 = (m[i].any(0).nonzero().flatten() for i in (0, 1))
    assert (cols1.min().item(), cols1.max().item()) == (2, 44)      # [floor(0.05 w/2), floor(0.95 w/2))
    assert (cols2.min().item(), cols2.max().item()) == (50, 92)     # shifted by w/2
    assert torch.equal(m[2], 1 - (m[0] + m[1]).clamp(max=1))


def test_boxes_official_row_first_and_xyxy():
    official = box_masks(40, 60, [[5, 2, 30, 20], [5, 32, 30, 58]])
    assert official[0, 5:30, 2:20].all() and official[0].sum() == 25 * 18
    xyxy = box_masks(40, 60, [[2, 5, 20, 30], [32, 5, 58, 30]], layout="xyxy")
    assert torch.equal(official, xyxy)
    with pytest.raises(MaskError, match="one box per speaker"):
        box_masks(40, 60, [[0, 0, 1, 1]])


def test_user_masks_and_resize():
    a, b = torch.zeros(1, 64, 96), torch.zeros(1, 64, 96)
    a[:, 8:56, 8:40], b[:, 8:56, 56:88] = 1, 1
    full = user_masks(a, b)
    lat = to_latent(full, 8, 12)
    assert lat.shape == (3, 8, 12) and set(lat.unique().tolist()) <= {0.0, 1.0}
    # source size differs from the generation size: resized/cropped like the image
    got = speaker_masks(2, 64, 96, 128, 192, full)
    assert got.shape == (3, 16, 24)


def test_empty_class_at_token_resolution_is_refused():
    m = torch.zeros(3, 8, 12)
    m[0, :, :6], m[2, :, 6:] = 1, 1  # speaker 2 owns nothing
    with pytest.raises(MaskError, match="speaker 2"):
        check_token_coverage(m, speakers=2)
    check_token_coverage(torch.ones(3, 8, 12), speakers=1)
    tiny = torch.zeros(3, 64, 96)
    tiny[0, :, :48], tiny[1, 0:2, 50:52] = 1, 1  # a 2x2-pixel speaker vanishes at the token grid
    tiny[2] = (tiny[0] + tiny[1] == 0).float()
    with pytest.raises(MaskError, match="covers no token"):
        speaker_masks(2, 64, 96, 64, 96, tiny)
