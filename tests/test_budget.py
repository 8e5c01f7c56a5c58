"""animevae.training.budget: the run's clock and time budget as one record."""

from __future__ import annotations

import time

import pytest

from animevae.training.budget import Budget


def test_the_record_round_trips_and_the_limits_come_from_the_session() -> None:
    budget = Budget(max_minutes=10.0, prior_share=0.1, elapsed_s=120.0, steps_s=100.0, end_cost_s=4.0)
    budget.start_session()
    record = budget.record()
    assert set(record) == {"elapsed_s", "steps_s", "end_cost_s", "final_fit_extra_s", "finished_under"}
    assert record["elapsed_s"] == pytest.approx(120.0, abs=0.5)
    resumed = Budget.restored(record, max_minutes=20.0, prior_share=0.0)  # resumed with a longer budget
    assert (resumed.max_minutes, resumed.vae_end_s, resumed.end_cost_s) == (20.0, 1200.0, 4.0)
    assert resumed.now() >= record["elapsed_s"]  # the clock goes on from the record
    assert resumed.overhead_s == pytest.approx(record["elapsed_s"] - 100.0)


def test_time_in_steps_is_training_and_the_rest_overhead() -> None:
    budget = Budget()
    budget.start_session()
    with budget.training_step():
        time.sleep(0.05)
    time.sleep(0.05)
    budget.sync()
    assert budget.steps_s >= 0.05 and budget.overhead_s >= 0.05
    assert budget.overhead_s == pytest.approx(budget.elapsed_s - budget.steps_s)


def test_the_vae_phase_stops_early_by_the_dearest_epoch_end() -> None:
    budget = Budget(max_minutes=1.0, prior_share=0.5)  # a 30 s VAE phase
    assert budget.vae_end_s == 30.0 and budget.total_s == 60.0
    budget.shared_s, budget.end_cost_s = 24.0, 5.0
    assert not budget.vae_phase_over() and budget.next_end_is_final()  # 24 + 2 x 5 >= 30
    assert budget.time_fraction() == pytest.approx(29.0 / 30.0)
    budget.shared_s = 25.0
    assert budget.vae_phase_over()
    with budget.epoch_end():
        pass
    assert budget.end_cost_s == 5.0  # the dearest is kept
    assert Budget().time_fraction() == 0.0 and not Budget().vae_phase_over()  # no budget: epochs decide
    budget.shared_s, budget.final_fit_extra_s = 22.0, 2.5  # the final report's full fit costs more: kept too
    assert budget.reserve_s == 7.5 and not budget.vae_phase_over() and budget.next_end_is_final()
    budget.shared_s = 23.0
    assert budget.vae_phase_over() and budget.prior_seconds() == pytest.approx(60.0 - budget.now() - 7.5, abs=0.01)


def test_a_run_is_finished_only_under_the_budget_that_ended_it() -> None:
    assert Budget(max_minutes=10.0, finished_under=10.0).finished()
    assert not Budget(max_minutes=15.0, finished_under=10.0).finished()
    assert not Budget(max_minutes=None, finished_under=None).finished()
