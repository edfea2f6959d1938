"""The DSAP clock on its own (no U-Net): schedule entries, second-order grouping, noise-level fallback, rounding."""

import pytest
import torch

from atedm_kernels.sdxl import AtEdmConfig, SiToConfig
from atedm_kernels.sdxl.clock import StepClock, schedule_entry


def walk(clock, timesteps):
    return [clock.locate(t) for t in timesteps]


def test_schedule_entries_are_found_from_metadata():
    schedule = torch.linspace(999, 0, 7)
    entries = [schedule_entry(t) for t in schedule]
    assert all(s is schedule for s, _ in entries) and [k for _, k in entries] == list(range(7))
    assert schedule_entry(schedule[3].expand(4))[1] == 3  # expanded to the batch, as some pipelines do
    assert schedule_entry(schedule[2:][1])[1] == 3  # img2img iterates a slice of the schedule
    assert schedule_entry(schedule[3].clone()) is None  # a copy is no entry: the value is read instead
    assert schedule_entry(schedule[1:3]) is None  # two values: per-sample timesteps
    assert schedule_entry(torch.tensor(999.0)) is None and schedule_entry(999) is None


def test_runs_steps_and_restarts():
    clock = StepClock()
    first = torch.tensor([999.0, 700.0, 400.0, 100.0])
    got = walk(clock, [first[0], first[0], first[1], first[2]])  # step 0 called twice (e.g. CFG in two calls)
    assert [(p.step, p.num_steps, new) for p, new in got] == [(0, 4, True), (0, 4, False), (1, 4, False), (2, 4, False)]
    assert all(p.timestep is None for p, _ in got)  # never read on the host
    second = torch.tensor([999.0])  # back-to-back one-step runs: each a new schedule tensor, a new run
    third = torch.tensor([999.0])
    assert [new for _, new in walk(clock, [second[0], third[0]])] == [True, True]
    assert walk(clock, [first[3], first[0]])[1][1] is True  # the same schedule again from its start: a new run


def test_second_order_order_comes_from_the_schedulers_in_reach():
    from diffusers import HeunDiscreteScheduler

    scheduler = HeunDiscreteScheduler()
    scheduler.set_timesteps(4)
    timesteps = scheduler.timesteps  # t0, t1, t1, t2, t2, t3, t3: 7 calls for 4 steps
    steps = [(p.step, p.num_steps) for p, _ in walk(StepClock(), list(timesteps))]  # `scheduler` is a caller local
    assert steps == [(0, 4), (0, 4), (1, 4), (1, 4), (2, 4), (2, 4), (3, 4)]


@pytest.mark.parametrize("spacing,offset", [("leading", 1), ("leading", 0), ("trailing", 0), ("linspace", 0)])
def test_bare_timesteps_place_50_steps_by_noise_level_as_15_plus_35(spacing, offset):
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(timestep_spacing=spacing, steps_offset=offset)
    scheduler.set_timesteps(50)
    clock = StepClock()
    positions = [clock.locate(float(t))[0] for t in scheduler.timesteps]  # host floats: no schedule to read
    assert [p.step for p in positions] == list(range(50)) and all(p.num_steps is None for p in positions)
    early = [p.progress(clock.train_timesteps) < AtEdmConfig().prune_less_fraction for p in positions]
    assert early == [True] * 15 + [False] * 35


def test_bare_timesteps_rising_start_a_run_and_equal_ones_stay():
    clock = StepClock()
    got = walk(clock, [900.0, 800.0, 800.0, 700.0, 950.0])
    assert [(p.step, new) for p, new in got] == [(0, True), (1, False), (1, False), (2, False), (0, True)]
    with pytest.raises(ValueError, match="timestep"):
        clock.locate(float("nan"))


@pytest.mark.parametrize("num_steps,early", [(1, 1), (4, 2), (10, 3), (20, 6), (50, 15), (1000, 300)])
def test_prune_less_count_is_the_ceiling_of_the_fraction(num_steps, early):
    assert AtEdmConfig().prune_less_count(num_steps) == early
    assert AtEdmConfig(prune_less_steps=15).prune_less_count(num_steps) == min(15, num_steps)
    assert AtEdmConfig(prune_less_fraction=0.0).prune_less_count(num_steps) == 0
    assert SiToConfig(prune_less_steps=2).prune_less_count(num_steps) == min(2, num_steps)


@pytest.mark.parametrize("value,error", [(-0.1, ValueError), (1.5, ValueError), ("0.3", TypeError),
                                         (True, TypeError), (float("nan"), ValueError)])
def test_prune_less_fraction_is_checked(value, error):
    with pytest.raises(error, match="prune_less_fraction"):
        AtEdmConfig(prune_less_fraction=value)
