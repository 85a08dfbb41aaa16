"""Timestep sequences: ADM respacing ("100", "10,10,3,2,2", "ddimN") and DDIM spacings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodegraph.diffusion import ddim_timesteps, space_timesteps, timestep_sequence


def test_glide_fast27_sections():
    ts = space_timesteps(1000, "10,10,3,2,2")
    assert len(ts) == 27 and ts == sorted(ts, reverse=True)
    asc = ts[::-1]
    # five sections of 200; section 1 takes 10 evenly spaced steps from 0 to 199 (stride 199/9, rounded)
    assert asc[:10] == [0, 22, 44, 66, 88, 111, 133, 155, 177, 199]
    assert asc[10] == 200 and asc[19] == 399
    assert asc[20:23] == [400, 500, 599]
    assert asc[23:] == [600, 799, 800, 999]


def test_single_count_and_ddim_strides():
    ts = space_timesteps(1000, "100")
    assert len(ts) == 100 and ts[0] == 999 and ts[-1] == 0
    assert space_timesteps(1000, 250) == space_timesteps(1000, "250")
    assert space_timesteps(1000, "ddim50") == list(range(980, -1, -20))
    assert space_timesteps(1000, "ddim7") == list(range(858, -1, -143))  # smallest stride giving 7 steps
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim999")
    with pytest.raises(ValueError):
        space_timesteps(100, "60,10")  # the first section has only 50 timesteps


@given(
    T=st.integers(min_value=1, max_value=2000),
    fractions=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=6),
)
def test_respacing_is_descending_unique_in_range_with_the_requested_count(T, fractions):
    sections = len(fractions)
    if sections > T:
        return
    size = T // sections  # the smallest section
    counts = [max(1, round(f * size)) for f in fractions]
    ts = space_timesteps(T, ",".join(map(str, counts)))
    assert len(ts) == sum(counts)
    assert all(a > b for a, b in zip(ts, ts[1:], strict=False))
    assert 0 <= ts[-1] and ts[0] <= T - 1 and ts[-1] == 0


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 27, 50, 1000])
def test_ddim_spacings_match_diffusers(spacing, steps):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=0)
    sched.set_timesteps(steps)
    assert ddim_timesteps(1000, steps, spacing) == sched.timesteps.tolist()


def test_spacings_by_hand_and_precedence():
    assert ddim_timesteps(1000, 4, "leading") == [750, 500, 250, 0]
    assert ddim_timesteps(1000, 4, "trailing") == [999, 749, 499, 249]
    assert ddim_timesteps(1000, 4, "linspace") == [999, 666, 333, 0]
    assert timestep_sequence(10) == list(range(9, -1, -1))
    assert timestep_sequence(1000, steps=4) == ddim_timesteps(1000, 4, "trailing")
    assert timestep_sequence(1000, steps=4, respacing="ddim4") == [750, 500, 250, 0]
    with pytest.raises(ValueError):
        ddim_timesteps(10, 11)
    with pytest.raises(ValueError):
        ddim_timesteps(10, 3, "uniform")


def test_linspace_rounds_exact_halves_as_numpy_does():
    np = pytest.importorskip("numpy")
    for T, n in [(1000, 27), (4000, 333), (999, 50)]:
        expected = np.linspace(0, T - 1, n).round()[::-1].astype(int).tolist()
        assert ddim_timesteps(T, n, "linspace") == sorted(set(expected), reverse=True)
