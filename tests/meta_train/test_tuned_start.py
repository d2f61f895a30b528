"""The family's tuned Adam (meta_train/recipe/tuned_start.py), checked on quadratics by hand."""

import jax
import numpy as np
import optax
import pytest

import tasks
from meta_train.evaluation import curves
from meta_train.recipe import tuned_adam


def _sphere(scale: float, dim: int = 2) -> tasks.QuadraticFamily:
  """``½|x − x*|²`` (A = I, no gradient noise), started at ``x* + scale · z``."""
  return tasks.QuadraticFamily(dim=dim, min_eig=1.0, max_eig=1.0, rotate=False,
                               init_scale=(scale, scale), noise_scale=(0.0, 0.0))


def test_one_step_table_is_the_hand_worked_loss_and_the_best_rate_its_minimum():
  """Adam's first step is ``−η g/(|g| + ε)``: on ``½|r|²`` each coordinate of the residual
  moves ``η`` towards 0, so the loss after it is ``½ Σ_i (|r_i| − η)²`` (ε = 1e-8)."""
  family, key = _sphere(1.0), jax.random.key(3)
  grid = (0.1, 0.3, 1.0, 3.0)
  start = tuned_adam(family, key, num_tasks=3, num_seeds=2, num_steps=1, learning_rates=grid,
                     min_learning_rate=0.1, max_learning_rate=3.0)
  # The residuals |x0 − x*| of every draw: parameters after 0 steps, from the same draws.
  task_params, keys = curves.draw(family, key, 3, 2)
  init = lambda tp, k: curves.trained_params_fn(family.task(tp), optax.adam(1.0), k, 0)["x"]
  x0 = jax.vmap(lambda tp, ks: jax.vmap(lambda k: init(tp, k))(ks))(task_params, keys)
  residuals = np.abs(np.asarray(x0) - np.asarray(task_params["optimum"])[:, None])
  residuals = residuals.reshape(6, 2)  # [draws, dim]
  expected = {eta: np.mean(0.5 * np.sum((residuals - eta) ** 2, axis=1)) for eta in grid}
  rates = [r for r, _ in start.table]
  assert rates == list(grid)  # the best rate is interior: no extension
  for rate, loss in start.table:
    np.testing.assert_allclose(loss, expected[rate], rtol=1e-4)
  assert start.learning_rate == min(expected, key=expected.get)
  assert start.learning_rate == min(start.table, key=lambda row: row[1])[0]
  assert (start.num_tasks, start.num_seeds, start.num_steps) == (3, 2, 1)
  record = start.provenance()
  assert record["learning_rate"] == start.learning_rate and record["optimizer"] == "adam"
  assert record["table"] == [[r, loss] for r, loss in start.table]


def test_the_rate_follows_the_familys_scale():
  """Parameters 100x further from the optimum need a larger Adam rate (its step is ~η per
  coordinate, whatever the gradient's size)."""
  common = dict(num_tasks=2, num_seeds=2, num_steps=20, max_learning_rate=100.0,
                learning_rates=(1e-3, 1e-2, 1e-1, 1.0, 10.0))
  near = tuned_adam(_sphere(0.05), jax.random.key(0), **common)
  far = tuned_adam(_sphere(5.0), jax.random.key(0), **common)
  assert far.learning_rate >= 30 * near.learning_rate
  for start in (near, far):
    losses = dict(start.table)
    assert losses[start.learning_rate] == min(losses.values())


def test_the_grid_is_extended_when_the_best_rate_sits_at_its_edge():
  """One step from ``|r_i| ~ 0.01``: the best rate (~0.01) lies above the grid (1e-3, 3e-3)."""
  start = tuned_adam(_sphere(0.01), jax.random.key(1), num_tasks=2, num_seeds=1, num_steps=1,
                     learning_rates=(1e-3, 3e-3))
  rates = [r for r, _ in start.table]
  assert {1e-3, 3e-3} < set(rates) and rates == sorted(rates)
  assert rates[-1] == pytest.approx(10 ** -1.5, rel=1e-5)  # half-decades up to 3.16e-2
  # Extended until the best is inside the grid.
  assert rates[0] < start.learning_rate < rates[-1]


def test_bad_sizes_are_refused_before_any_run():
  with pytest.raises(ValueError, match="num_steps must be a positive int, got 0"):
    tuned_adam(_sphere(1.0), jax.random.key(0), num_steps=0)


# --- the tuned start in meta-training (optimizer.start.scheme=tuned_adam_like) ------------

_TINY = ["run.num_outer_steps=2", "run.checkpoint_every=2", "run.log_every=1",
         "run.progress=off", "wandb.mode=disabled", "estimator.num_pairs=1",
         "estimator.truncation_length=5", "estimator.min_horizon=10", "estimator.max_horizon=10",
         "optimizer.start.scheme=tuned_adam_like", "optimizer.start.decay=1.0"]


def test_the_tuned_start_is_adam_like_at_the_sweeps_rate_and_kept_for_resume(tmp_path):
  import chex  # pylint: disable=import-outside-toplevel
  import learned_opt  # pylint: disable=import-outside-toplevel
  from meta_train import config as C  # pylint: disable=import-outside-toplevel
  from meta_train.runtime import run as R  # pylint: disable=import-outside-toplevel
  built = C.build(C.resolve("smoke", _TINY))
  resolved, record = R.resolve_start(built, str(tmp_path), True)
  # The sweep: tuned_adam on the run's own key, for runs of the training horizon.
  key = jax.random.fold_in(jax.random.key(0), R._START_TAG)  # pylint: disable=protected-access
  expected = tuned_adam(built.family, key, num_steps=10)
  assert record["learning_rate"] == expected.learning_rate
  assert record["table"] == expected.provenance()["table"] and record["decay"] == 1.0
  theta = resolved.start(jax.random.key(5))
  chex.assert_trees_all_equal(theta, learned_opt.inits.adam_like(
      built.lopt, jax.random.key(5), learning_rate=expected.learning_rate, decay=1.0))
  # A resumed run reads start.json instead of sweeping again (here: a changed rate is used).
  path = tmp_path / R.START_FILE
  path.write_text(path.read_text().replace(repr(expected.learning_rate), "0.125"))
  again, record = R.resolve_start(built, str(tmp_path), True)
  assert record["learning_rate"] == 0.125
  chex.assert_trees_all_equal(again.start(jax.random.key(5)), learned_opt.inits.adam_like(
      built.lopt, jax.random.key(5), learning_rate=0.125, decay=1.0))
  # Other schemes are left as they are.
  plain = C.build(C.resolve("smoke", []))
  assert R.resolve_start(plain, str(tmp_path / "other"), True) == (plain, None)


def test_a_tuned_start_run_records_its_sweep_in_the_optimizer_file(tmp_path):
  import io  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  import learned_opt  # pylint: disable=import-outside-toplevel
  from meta_train import config as C  # pylint: disable=import-outside-toplevel
  from meta_train.runtime import run as R  # pylint: disable=import-outside-toplevel
  out = io.StringIO()
  R.run(C.resolve("smoke", _TINY), tmp_path / "r", stdout=out)
  record = json.loads((tmp_path / "r" / R.START_FILE).read_text())
  prov = learned_opt.provenance(str(tmp_path / "r" / R.OPTIMIZER_FILE))
  assert prov["start"] == record and record["scheme"] == "tuned_adam_like"
  assert prov["family"] == "quadratic"  # what learned_opt.pretrained_info reports
  assert f"tuned Adam start at learning rate {record['learning_rate']:g}" in out.getvalue()


def test_a_tuned_start_takes_no_learning_rate():
  from meta_train import config as C  # pylint: disable=import-outside-toplevel
  with pytest.raises(C.ConfigError) as e:
    C.build(C.resolve("smoke", _TINY + ["optimizer.start.learning_rate=0.01"]))
  assert e.value.path == "optimizer.start.learning_rate"
  assert "tuned Adam rate with scheme=tuned_adam_like" in str(e.value)
