"""Tests of meta_train.evaluate: the report's numbers against hand-computed answers."""

import json

import jax
import numpy as np
import optax
import pytest

import learned_opt
import tasks
from meta_train import evaluate as ev


def test_interquartile_mean_exact():
  assert ev.interquartile_mean(np.arange(8.0)) == pytest.approx(np.mean([2, 3, 4, 5]))
  assert ev.interquartile_mean(np.array([5.0])) == 5.0


def test_steps_to_reach():
  env = np.array([4.0, 3.0, 2.0, 1.0])
  assert ev.steps_to_reach(env, 2.5) == 2.0
  assert ev.steps_to_reach(env, 0.5) == float("inf")


def test_summarize_hand_built_curves():
  steps = np.arange(11.0)
  # Two Adam learning rates; the better one decays as 10 - t, the learned one reaches 2.0 at t=10.
  adam = np.stack([np.broadcast_to(20.0 - steps, (1, 1, 11)),
                   np.broadcast_to(10.0 - steps, (1, 1, 11))])
  learned = np.broadcast_to(np.linspace(10.0, 2.0, 11), (1, 1, 11))
  s = ev.summarize(learned, adam, (1e-3, 1e-2), smoothing_window=1)
  assert s["adam_best_learning_rate_per_task"] == [1e-2]
  assert s["final_loss_adam_tuned"] == [[0.0]]
  assert s["win_fraction"] == 0.0
  # The envelope (10 - t) reaches 2.0 at t = 8: speed-up 8 / 10.
  assert s["speedup_median"] == pytest.approx(0.8)
  # A learned optimizer that beats Adam's best final loss gets the cap.
  s = ev.summarize(learned - 3.0, adam, (1e-3, 1e-2), max_speedup=7.0, smoothing_window=1)
  assert s["win_fraction"] == 1.0 and s["speedup_median"] == 7.0


def test_smooth_is_a_trailing_moving_average():
  x = np.array([[4.0, 2.0, 0.0, 2.0, 4.0]])
  np.testing.assert_allclose(ev.smooth(x, 2), [[4.0, 3.0, 1.0, 1.0, 3.0]])
  np.testing.assert_array_equal(ev.smooth(x, 1), x)


def test_noise_in_the_adam_grid_does_not_fake_a_speedup():
  """One noisy dip of one Adam curve must not count as reaching the learned optimizer's loss."""
  steps = 41
  learned = np.broadcast_to(np.linspace(2.0, 1.0, steps), (1, 1, steps)).copy()
  adam = np.full((2, 1, 1, steps), 1.5)
  adam[1, 0, 0, 5] = 0.5  # a single lucky minibatch
  raw = ev.summarize(learned, adam, (1e-3, 1e-2), smoothing_window=1)
  smoothed = ev.summarize(learned, adam, (1e-3, 1e-2), max_speedup=7.0, smoothing_window=4)
  assert raw["speedup_median"] == pytest.approx(5 / 40)
  assert smoothed["speedup_median"] == 7.0


def test_summarize_counts_nonfinite():
  adam = np.ones((1, 1, 2, 5))
  learned = np.ones((1, 2, 5))
  learned[0, 1, 3] = np.nan
  s = ev.summarize(learned, adam, (1e-3,))
  assert s["nonfinite_runs_learned"] == 1 and s["nonfinite_runs_adam"] == 0


def test_eval_config_rejects_bad_values():
  with pytest.raises(ValueError, match="num_steps"):
    ev.EvalConfig(num_steps=0)
  with pytest.raises(ValueError, match="adam_learning_rates"):
    ev.EvalConfig(adam_learning_rates=(-1.0,))


def test_learned_adam_matches_grid_adam_and_report_round_trips(tmp_path):
  """The Adam baseline with the grid's learning rate must trace the same curves as optax.adam."""
  family = tasks.QuadraticFamily(dim=4)
  lopt = learned_opt.Adam(initial_learning_rate=3e-2)
  cfg = ev.EvalConfig(num_tasks=2, num_seeds=2, num_steps=12, adam_learning_rates=(1e-2, 3e-2))
  summary = ev.evaluate_and_report(lopt, lopt.init(jax.random.key(0)), family, str(tmp_path), cfg)
  data = json.loads((tmp_path / "eval.json").read_text())
  np.testing.assert_allclose(data["mean_curve_learned"], data["mean_curve_adam"][1], rtol=1e-4)
  assert data["win_fraction"] == summary["win_fraction"]
  assert (tmp_path / "eval.png").stat().st_size > 1000
  assert "speed-up" in (tmp_path / "eval.md").read_text()
