"""The summary's final losses: each curve smoothed over time, then read at its last step, per
(task, seed) run; speed-ups on the seed-mean envelope, interpolated between points. Numbers
worked out by hand."""

import numpy as np
import pytest

from meta_train import evaluate as ev


def _two_seeds():
  # One task, two seeds, 5 points (steps 0..4), window 2.
  learned = np.array([[[4.0, 4.0, 4.0, 2.0, 0.0],     # smoothed final (2 + 0) / 2 = 1
                       [4.0, 4.0, 4.0, 4.0, 2.0]]])   # smoothed final (4 + 2) / 2 = 3
  adam = np.full((1, 1, 2, 5), 2.0)                  # final 2 for both seeds
  return learned, adam


def test_final_losses_are_smoothed_over_time_per_seed():
  learned, adam = _two_seeds()
  s = ev.summarize(learned, adam, (1e-3,), smoothing_window=2)
  # Before the fix the window ran across the two seeds' last values [0, 2] -> [0, 1].
  assert s["final_loss_learned"] == [[1.0, 3.0]]
  assert s["final_loss_adam_tuned"] == [[2.0, 2.0]]


def test_win_fraction_with_several_seeds_and_a_window():
  learned, adam = _two_seeds()
  s = ev.summarize(learned, adam, (1e-3,), smoothing_window=2)
  assert s["win_fraction"] == 0.5  # 1 < 2 wins, 3 > 2 loses (before the fix: 1.0)


def test_speedups_with_several_seeds_and_a_window():
  learned, _ = _two_seeds()
  # Adam decays 4, 3, 2, 1, 0; smoothed (window 2): 4, 3.5, 2.5, 1.5, 0.5.
  adam = np.broadcast_to(np.array([4.0, 3.0, 2.0, 1.0, 0.0]), (1, 1, 2, 5))
  s = ev.summarize(learned, adam, (1e-3,), max_speedup=4.0, smoothing_window=2)
  # Seed 0's 1.0 lies halfway from 1.5 (step 3) to 0.5 (step 4): 3.5 / 4; seed 1's 3.0
  # halfway from 3.5 (step 1) to 2.5 (step 2): 1.5 / 4 (interpolated steps-to-reach).
  np.testing.assert_allclose(s["speedup_per_run"], [[0.875, 0.375]])
  assert s["speedup_median"] == pytest.approx(0.625)


def test_tuning_uses_each_seeds_time_smoothed_final():
  # Two learning rates, one task, three seeds, window 3, 4 points.
  learned = np.full((1, 3, 4), 5.0)
  lr_a = np.array([[[9.0, 3.0, 3.0, 3.0], [9.0, 3.0, 3.0, 3.0], [9.0, 3.0, 3.0, 3.0]]])
  lr_b = np.array([[[9.0, 9.0, 0.0, 3.0], [9.0, 9.0, 9.0, 0.0], [9.0, 9.0, 9.0, 0.0]]])
  # Smoothed finals (last 3 values): lr_a: 3, 3, 3 (mean 3); lr_b: 4, 6, 6 (mean 16 / 3).
  s = ev.summarize(learned, np.stack([lr_a, lr_b]), (1e-3, 1e-2), smoothing_window=3)
  assert s["adam_best_learning_rate_per_task"] == [1e-3]
  assert s["final_loss_adam_tuned"] == [[3.0, 3.0, 3.0]]
  assert s["win_fraction"] == 0.0


def test_report_json_rounds_to_six_digits_and_keeps_lists_on_one_line():
  import json  # pylint: disable=import-outside-toplevel
  from meta_train.evaluation import report  # pylint: disable=import-outside-toplevel
  doc = {"a": [0.9166666666666666, 1e-07, None, float("inf")], "b": {"c": [1, 2]},
         "s": "x [1,  2] y", "n": [[0.1234567, 2.0], ["u", "v"]]}
  text = report.json_text(doc)
  assert '"a": [0.916667, 1e-07, null, Infinity]' in text
  assert '"c": [1, 2]' in text and '"s": "x [1,  2] y"' in text  # strings untouched
  assert json.loads(text) == {"a": [0.916667, 1e-07, None, float("inf")], "b": {"c": [1, 2]},
                              "s": "x [1,  2] y", "n": [[0.123457, 2.0], ["u", "v"]]}
