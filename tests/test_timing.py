"""Timing helpers: call counts and the shape of their results (no timing thresholds here:
speed targets live in benchmarks/)."""

import pytest

import autochunk_tvm as ac
from autochunk_tvm.runtime import vm_callable


def test_time_callable_warms_up_then_times_each_repeat():
    calls = []
    timing = ac.time_callable(lambda: calls.append(1), warmup=3, repeats=5)
    assert len(calls) == 8 and timing.repeats == 5
    assert 0 <= timing.min_s <= timing.median_s <= timing.max_s
    with pytest.raises(ValueError):
        ac.time_callable(lambda: None, repeats=0)


def test_speed_ratio_interleaves_the_two_builds():
    order = []
    ratio = ac.speed_ratio(
        lambda: order.append("a"), lambda: order.append("b"), warmup=1, repeats=3
    )
    assert order == ["a", "b"] * 4 and ratio > 0


def test_vm_callable_runs_a_build():
    model, args = ac.models.gpt("tiny")
    from tvm import relax

    ex = relax.build(ac.from_torch(model, args), target="llvm")
    run = vm_callable(ex, args)
    out = run()
    assert tuple(out[0].shape) == (1, 16, 64)
