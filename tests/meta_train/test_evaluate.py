"""meta_train.evaluate: measures against hand-computed answers, tuned baselines, the cache."""

import math

import jax
import numpy as np
import optax
import pytest

import learned_opt
import tasks
from meta_train import evaluate as ev
from meta_train.evaluation import baselines as B
from meta_train.evaluation import cache as cache_lib
from meta_train.evaluation import compare
from meta_train.evaluation import curves as curves_lib
from meta_train.evaluation import measures as M


def test_interquartile_mean_exact():
  assert M.interquartile_mean(np.arange(8.0)) == pytest.approx(np.mean([2, 3, 4, 5]))
  assert M.interquartile_mean(np.array([5.0])) == 5.0


def test_smooth_is_a_trailing_moving_average_and_keeps_inf_local():
  x = np.array([[4.0, 2.0, 0.0, 2.0, 4.0]])
  np.testing.assert_allclose(M.smooth(x, 2), [[4.0, 3.0, 1.0, 1.0, 3.0]])
  np.testing.assert_array_equal(M.smooth(x, 1), x)
  y = M.smooth(np.array([1.0, np.inf, 1.0, 1.0]), 2)
  np.testing.assert_array_equal(y, [1.0, np.inf, np.inf, 1.0])  # no nan from inf - inf


def test_final_loss_reads_a_step_inside_a_longer_run():
  curves = np.array([[0.0, 6.0, 4.0, 2.0, 100.0, 100.0]])
  assert M.final_loss(curves, 2, step=3).tolist() == [3.0]
  assert M.final_loss(curves, 3).tolist() == [(2 + 100 + 100) / 3]
  assert M.final_loss(np.array([[1.0, np.nan, 2.0]]), 1).tolist() == [2.0]
  assert M.final_loss(np.array([[1.0, 2.0, np.nan]]), 1).tolist() == [np.inf]


def test_speedup_constant_and_cap():
  env = np.array([[[4.0, 3.0, 2.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5]]])  # 2N + 1 points, N = 4
  learned = np.array([[2.0]])
  assert M.speedup_constant(learned, env, 4, 2.0).tolist() == [[0.5]]  # step 2 / 4
  assert M.speedup_constant(np.array([[0.5]]), env, 4, 2.0).tolist() == [[1.0]]
  assert M.speedup_constant(np.array([[0.1]]), env, 4, 2.0).tolist() == [[2.0]]  # never: cap


def test_speedup_by_length_hand_computed():
  n = 10
  first = np.array([[[5.0] * 6 + [3.0, 2.0, 2.0, 2.0, 2.0]]])  # reaches 3.0 at step 6
  finals = {1.0: np.array([[2.0]]), 1.5: np.array([[1.5]]), 2.0: np.array([[1.0]]),
            3.0: np.array([[0.8]]), 4.0: np.array([[0.7]])}
  run = lambda target: M.speedup_by_length(np.array([[target]]), first, finals, n, 4.0)[0, 0]
  assert run(3.0) == pytest.approx(0.6)   # inside the 1x run: step 6 / 10
  assert run(1.2) == 2.0                  # 1.5x gets 1.5 > 1.2; 2x gets 1.0
  assert run(0.75) == 4.0                 # 3x: 0.8 > 0.75; 4x: 0.7 reaches it
  assert run(0.1) == 4.0                  # never: the cap


def test_diverged_runs():
  curves = np.array([[1.0, 2.0, 9.0], [1.0, 11.0, 0.5], [1.0, np.nan, 0.1], [-1.0, 5.0, 1.0]])
  assert M.diverged(curves).tolist() == [False, True, True, False]


def test_bootstrap_interval_brackets_the_statistic_and_is_deterministic():
  wins = np.array([1.0] * 6 + [0.0] * 10)
  lo, hi = M.bootstrap_ci(wins, np.mean, 500, seed=3)
  assert lo < wins.mean() < hi and 0.0 <= lo and hi <= 1.0
  assert (lo, hi) == M.bootstrap_ci(wins, np.mean, 500, seed=3)
  assert M.bootstrap_ci(np.ones(5), np.median, 50) == (1.0, 1.0)


def test_half_decades():
  assert B.half_decade(1e-1, 1) == pytest.approx(10 ** -0.5, rel=1e-5)
  assert B.half_decade(B.half_decade(1e-1, 1), 1) == 1.0
  assert B.half_decade(1e-4, -1) == pytest.approx(10 ** -4.5, rel=1e-5)
  assert B.half_decade(3e-4, 1) == pytest.approx(1e-3)  # 3e-4 sits on the lattice at 10^-3.5


def test_cosine_schedule_warms_up_then_decays_to_zero():
  tx = curves_lib.cosine_adam(20, 0.05)(1.0)  # warm-up: 1 step
  sched_state = tx.init({"w": np.zeros(())})
  factors = []
  g = {"w": np.ones(())}
  state = sched_state
  for _ in range(20):
    u, state = tx.update(g, state)
    factors.append(-float(u["w"]))  # Adam's first steps on a constant gradient are ~1
  assert factors[0] == pytest.approx(1.0, abs=1e-3)
  assert factors[10] == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 19)), abs=1e-3)
  assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 18 / 19)), abs=1e-3)


def test_eval_config_rejects_bad_values():
  with pytest.raises(ValueError, match="num_steps"):
    ev.EvalConfig(num_steps=0)
  with pytest.raises(ValueError, match="learning_rates"):
    ev.EvalConfig(learning_rates=(-1.0,))
  assert ev.EvalConfig(num_steps=100).window == 5


def _quadratic_problem(num_tasks=2, num_seeds=2):
  family = tasks.QuadraticFamily(dim=4)
  tp, keys = curves_lib.draw(family, jax.random.key(0), num_tasks, num_seeds)
  return B.Problem(family, "quadratic:test", tp, keys)


def test_grid_program_matches_optax_adam_and_the_valid_keys_are_separate():
  problem = _quadratic_problem()
  curves, _ = curves_lib.training_curves(problem.family, curves_lib.constant_adam,
                                         np.array([1e-2, 3e-2]), problem.task_params,
                                         problem.keys, 6)
  single, _ = curves_lib.learned_curves(problem.family, optax.adam(3e-2), problem.task_params,
                                        problem.keys, 6)
  np.testing.assert_allclose(curves[1], single, rtol=1e-5)
  assert curves.shape == (2, 2, 2, 7)
  # A learned optimizer that is Adam traces the same curves as the grid's Adam.
  lopt = learned_opt.Adam(initial_learning_rate=3e-2)
  same, _ = curves_lib.learned_curves(problem.family, lopt.transform(lopt.init(jax.random.key(0))),
                                      problem.task_params, problem.keys, 6)
  np.testing.assert_allclose(same, single, rtol=1e-4)


def test_tuned_grid_extends_at_the_top_edge_and_caches(tmp_path):
  problem = _quadratic_problem()
  cfg = ev.EvalConfig(num_tasks=2, num_seeds=2, num_steps=8, learning_rates=(1e-2, 3e-2))
  cache = cache_lib.CurveCache(str(tmp_path))
  runs, best = B.tuned_grid(problem, "constant", 8, 8, cfg, cache)
  lrs = runs.learning_rates.tolist()
  assert lrs[:2] == [1e-2, 3e-2] and len(lrs) > 2
  # Every added rate is half a decade above the previous top; the best rate is interior
  # (or the grid reached max_learning_rate).
  for a, b in zip(lrs[1:], lrs[2:]):
    assert b == pytest.approx(B.half_decade(a, 1), rel=1e-5)
  assert all(0 < i < len(lrs) - 1 for i in best) or lrs[-1] == 1.0
  before = cache.misses
  runs2, best2 = B.tuned_grid(problem, "constant", 8, 8, cfg, cache)
  assert cache.misses == before  # every rate read back
  np.testing.assert_array_equal(runs2.curves, runs.curves)
  np.testing.assert_array_equal(best2, best)


def test_cache_keys_separate_draws_lengths_and_schedules(tmp_path):
  cache = cache_lib.CurveCache(str(tmp_path))
  key = dict(family="f", draws="d", num_steps=4, schedule="constant", learning_rate=0.1,
             with_metric=False)
  cache.put(cache_lib.entry_key(**key), {"curves": np.arange(3.0)})
  np.testing.assert_array_equal(cache.get(cache_lib.entry_key(**key))["curves"], np.arange(3.0))
  for change in ({"draws": "e"}, {"num_steps": 5}, {"schedule": "cosine"},
                 {"learning_rate": 0.2}, {"family": "g"}):
    assert cache.get(cache_lib.entry_key(**{**key, **change})) is None
  assert cache_lib.entry_key(**key)["jax"] == jax.__version__
  for p in tmp_path.iterdir():  # a plain npz file, readable without pickle
    np.load(p, allow_pickle=False).close()
  (next(tmp_path.iterdir())).write_bytes(b"garbage")
  assert cache.get(cache_lib.entry_key(**key)) is None


def test_fingerprint_depends_on_the_draws():
  a = cache_lib.fingerprint({"x": np.zeros(3)}, jax.random.split(jax.random.key(0), 2))
  b = cache_lib.fingerprint({"x": np.zeros(3)}, jax.random.split(jax.random.key(1), 2))
  assert a != b and a == cache_lib.fingerprint({"x": np.zeros(3)},
                                               jax.random.split(jax.random.key(0), 2))


def test_evaluate_family_numbers_agree_with_the_measures():
  """Adam as the 'learned' optimizer against the tuned baselines, numbers recomputed here."""
  family = tasks.QuadraticFamily(dim=4)
  cfg = ev.EvalConfig(num_tasks=2, num_seeds=2, num_steps=8, learning_rates=(1e-2, 3e-2, 1e-1),
                      bootstrap_samples=200)
  lopt = learned_opt.Adam(initial_learning_rate=3e-2)
  r = ev.evaluate_family(lopt, lopt.init(jax.random.key(0)), family, "quadratic", cfg,
                         label="adam", suite="in_distribution", baselines=("adam",),
                         envelope_factor=2.0)
  (e,) = r.entries
  for k in ("optimizer", "family", "baseline", "num_steps", "win_fraction", "speedup_median",
            "speedup_iqm", "final_loss_ratio_median", "diverged_runs", "win_fraction_ci",
            "speedup_median_ci"):
    assert k in e, k
  learned = np.asarray(e["final_loss_learned"])
  base = np.asarray(e["final_loss_baseline"])
  assert e["win_fraction"] == np.mean(learned < base)
  assert e["speedup_median"] == np.median(e["speedup_per_run"])
  assert e["final_loss_ratio_median"] == pytest.approx(np.median(learned / base))
  assert max(np.ravel(e["speedup_per_run"])) <= 2.0
  assert e["win_fraction_ci"][0] <= e["win_fraction"] <= e["win_fraction_ci"][1]
  # Draws are a function of (seed, family name) only: the same tasks for every optimizer.
  p1 = ev.suites.problems(family, "quadratic", cfg)[0]
  p2 = ev.suites.problems(family, "quadratic", cfg)[0]
  assert p1.draws == p2.draws
  p3 = ev.suites.problems(family, "other_name", cfg)[0]
  assert p3.draws != p1.draws


def test_mixture_runs_are_grouped_by_member():
  family = tasks.mixture_of([tasks.QuadraticFamily(dim=2, name="q2"),
                             tasks.QuadraticFamily(dim=3, name="q3")])
  cfg = ev.EvalConfig(num_tasks=6, num_seeds=1)
  groups = ev.suites.problems(family, "mix", cfg)
  tp, _ = curves_lib.draw(family, ev.suites.eval_key(cfg.seed, "mix"), 6, 1)
  counts = np.bincount(np.asarray(tp["index"]), minlength=2)
  assert [jax.tree.leaves(g.task_params)[0].shape[0] for g in groups] == [
      c for c in counts if c]
  assert sum(g.keys.shape[0] for g in groups) == 6


def test_compare_concat_joins_runs():
  c = compare.Comparison("adam", np.ones((1, 2)), np.ones((1, 2)), np.ones((1, 2)),
                         np.ones(1), np.array([1e-3]), np.ones((1, 3)), np.ones((1, 2, 3)),
                         np.zeros((1, 2), bool), None)
  j = compare.concat([c, c])
  assert j.learned_final.shape == (2, 2) and j.tuned_curves.shape == (2, 2, 3)


def test_learned_curves_and_trained_params_pass_the_loss_to_a_learned_schedule():
  problem = _quadratic_problem(num_tasks=1, num_seeds=1)
  lopt = learned_opt.MLPOptimizer(hidden_sizes=(4,), init_scheme="adam", time_scales=(1.0,),
                                  schedule_hidden_size=2, schedule_loss_decays=(0.5,))
  theta = lopt.init(jax.random.key(0))
  # s = 3 relu(-log(ℓ / ê_0.5)): larger steps while the loss falls, so the loss matters.
  col = lopt.num_shared_features
  theta = dict(theta, sched_w0=theta["sched_w0"].at[:, 0].set(0.0).at[col, 0].set(-1.0),
               sched_w1=theta["sched_w1"].at[0, 0].set(3.0))
  tx = lopt.transform(theta)
  curves, _ = curves_lib.learned_curves(problem.family, tx, problem.task_params, problem.keys, 5)
  tp = jax.tree.map(lambda x: x[0], problem.task_params)
  key = problem.keys[0, 0]
  params = curves_lib.trained_params(problem.family, tx, tp, key, 5)
  task = problem.family.task(tp)
  _, k_batch, k_loss, _, _ = jax.random.split(key, 5)
  final = float(task.loss(params, k_loss, task.sample_batch(k_batch, "valid")))
  np.testing.assert_allclose(curves[0, 0, -1], final, rtol=1e-5)
  # Without the loss the schedule stays at s = 0: a different run.
  plain = lopt.transform(dict(theta, sched_w1=theta["sched_w1"] * 0.0))
  other, _ = curves_lib.learned_curves(problem.family, plain, problem.task_params,
                                       problem.keys, 5)
  assert abs(float(other[0, 0, -1]) - final) > 1e-3 * abs(final)
