"""Shifted timesteps (bit-exact vs the golden schedule) and the Euler update."""
import pytest
import torch

from golden import assert_close, golden_cases
from infinitetalk.samplers.schedule import default_shift, euler_step, timesteps


@pytest.mark.parametrize("case", golden_cases("schedule"))
def test_timesteps_bit_exact(case):
    out = case.outputs()
    for steps, shift in case.case["combos"]:
        ts = timesteps(int(steps), float(shift))
        assert all(t.shape == (1,) and t.dtype == torch.float32 for t in ts)
        got = torch.cat(ts)
        key = f"timesteps_steps{int(steps)}_shift{int(shift)}"
        assert torch.equal(got, out[key]), key
        dt_key = f"dt_steps{int(steps)}_shift{int(shift)}"
        if dt_key in out:
            assert torch.equal((got[:-1] - got[1:]) / 1000, out[dt_key]), dt_key


def test_defaults_and_errors():
    assert default_shift("480p") == 7 and default_shift("720p") == 11
    with pytest.raises(ValueError, match="resolution"):
        default_shift("1080p")
    with pytest.raises(ValueError, match="steps"):
        timesteps(0, 7.0)


def test_euler_step_matches_reference_update():
    ts = timesteps(4, 2.0)
    x, v = torch.randn(16, 3, 4, 6), torch.randn(16, 3, 4, 6)
    expected = x + (-v) * ((ts[1] - ts[2]) / 1000)[:, None, None, None]
    assert_close(euler_step(x, v, ts[1], ts[2]), expected, 0.0, "euler")
    # integrating the exact velocity of a straight path lands on x0
    x0, noise = torch.randn(16, 1, 2, 2), torch.randn(16, 1, 2, 2)
    lat = noise.clone()
    for i in range(4):
        lat = euler_step(lat, noise - x0, ts[i], ts[i + 1])
    assert_close(lat, x0, 1e-5, "straight path")
