"""meta_train.evaluate: measures against hand-computed answers, tuned baselines, the cache."""

import logging
import math
import re

import jax
import jax.numpy as jnp
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
  # Short at the start (the meta-loss figure's trailing mean is this one).
  np.testing.assert_allclose(M.smooth(np.array([2.0, 4.0, 6.0]), 10), [2.0, 3.0, 4.0])
  y = M.smooth(np.array([1.0, np.inf, 1.0, 1.0]), 2)
  np.testing.assert_array_equal(y, [1.0, np.inf, np.inf, 1.0])  # no nan from inf - inf


def test_final_loss_reads_a_step_inside_a_longer_run():
  curves = np.array([[0.0, 6.0, 4.0, 2.0, 100.0, 100.0]])
  assert M.final_loss(curves, 2, step=3).tolist() == [3.0]
  assert M.final_loss(curves, 3).tolist() == [(2 + 100 + 100) / 3]
  assert M.final_loss(np.array([[1.0, np.nan, 2.0]]), 1).tolist() == [2.0]
  assert M.final_loss(np.array([[1.0, 2.0, np.nan]]), 1).tolist() == [np.inf]


def test_reach_step_interpolates_between_recorded_points():
  steps = np.array([0, 10, 20, 30])
  curve = np.array([4.0, 3.0, 1.0, 0.5])
  assert M.reach_step(curve, steps, 2.0) == pytest.approx(15.0)   # halfway from 3 to 1
  assert M.reach_step(curve, steps, 3.0) == 10.0                  # exactly on a point
  assert M.reach_step(curve, steps, 5.0) == 0.0                   # already at initialisation
  assert M.reach_step(curve, steps, 0.1) == np.inf                # never
  assert M.reach_step(np.array([4.0, np.inf, 1.0]), np.array([0, 1, 2]), 2.0) == 2.0


def test_envelope_averages_each_rate_over_seeds_before_the_minimum():
  # One task, two rates, two seeds, three points. Worked by hand:
  #   rate a: seeds [4, 2, 3] and [4, 4, 1] -> seed mean [4, 3, 2]
  #   rate b: seeds [4, 1, 5] and [4, 3, 5] -> seed mean [4, 2, 5]
  #   min over rates [4, 2, 2]; running minimum [4, 2, 2].
  # A per-seed oracle (min over rates for each seed) would give [4, 1, 1] for seed 0.
  curves = np.array([[[[4.0, 2.0, 3.0], [4.0, 4.0, 1.0]]],
                     [[[4.0, 1.0, 5.0], [4.0, 3.0, 5.0]]]])
  np.testing.assert_array_equal(M.seed_mean_envelope(curves), [[4.0, 2.0, 2.0]])


def test_envelope_is_a_running_minimum_and_a_diverged_seed_disqualifies_its_rate():
  curves = np.array([[[[5.0, 2.0, 3.0, 1.0]]]])  # one rate, one task, one seed
  np.testing.assert_array_equal(M.seed_mean_envelope(curves), [[5.0, 2.0, 2.0, 1.0]])
  # Rate a's second seed diverges at point 1: its mean there is inf, so rate b's 3.0 counts.
  curves = np.array([[[[4.0, 1.0], [4.0, np.nan]]], [[[4.0, 3.0], [4.0, 3.0]]]])
  np.testing.assert_array_equal(M.seed_mean_envelope(curves), [[4.0, 3.0]])


def test_speedup_envelope_interpolates_caps_and_flags_runs_never_reached():
  steps = np.arange(9) * 5                      # N = 20 steps, points every 5, run to 2N
  env = np.array([[4.0, 3.0, 2.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]])
  finals = np.array([[2.0, 0.75, 0.25, 0.1]])
  speed, reached = M.speedup_envelope(finals, env, steps, 20, 2.0)
  # 2.0 at step 10 -> 0.5; 0.75 halfway from 1.0 (step 15) to 0.5 (step 20) -> 17.5 / 20;
  # 0.25 exactly at the last point (step 40 = cap * N): reached, 2.0; 0.1 never: cap.
  np.testing.assert_allclose(speed, [[0.5, 0.875, 2.0, 2.0]])
  assert reached.tolist() == [[True, True, True, False]]


def test_speedup_by_length_interpolates_log_linearly_between_bracketing_lengths():
  n = 10
  steps = np.arange(11)
  first = np.array([[[5.0] * 6 + [3.0, 2.5, 2.0, 2.0, 2.0]]])  # reaches 3.0 at step 6
  finals = {1.0: np.array([[2.0]]), 1.5: np.array([[1.5]]), 2.0: np.array([[1.0]]),
            3.0: np.array([[0.8]]), 4.0: np.array([[0.7]])}
  run = lambda target: M.speedup_by_length(np.array([[target]]), first, steps, finals, n, 4.0)
  assert run(3.0)[0][0, 0] == pytest.approx(0.6)      # inside the 1x run: step 6 / 10
  assert run(2.75)[0][0, 0] == pytest.approx(0.65)    # interpolated between steps 6 and 7
  # 1.2 lies between 1.5 (at 1.5x) and 1.0 (at 2x): w = 0.3 / 0.5, f = 1.5 (2 / 1.5)^0.6.
  assert run(1.2)[0][0, 0] == pytest.approx(1.5 * (2 / 1.5) ** 0.6)
  # A target 1 % short of the 1x run is reached a hair past 1x, not at the 1.5x rung.
  assert run(1.98)[0][0, 0] == pytest.approx(1.5 ** (0.02 / 0.5))
  assert run(0.7)[0][0, 0] == pytest.approx(4.0) and run(0.7)[1][0, 0]
  speed, reached = run(0.1)                           # never: the cap, not reached
  assert speed[0, 0] == 4.0 and not reached[0, 0]


def test_diverged_runs():
  curves = np.array([[1.0, 2.0, 9.0], [1.0, 11.0, 0.5], [1.0, np.nan, 0.1], [-1.0, 5.0, 1.0]])
  assert M.diverged(curves).tolist() == [False, True, True, False]


def test_bootstrap_interval_brackets_the_statistic_and_is_deterministic():
  wins = np.array([1.0] * 6 + [0.0] * 10)
  lo, hi = M.bootstrap_ci(wins, np.mean, 500, seed=3)
  assert lo < wins.mean() < hi and 0.0 <= lo and hi <= 1.0
  assert (lo, hi) == M.bootstrap_ci(wins, np.mean, 500, seed=3)
  assert M.bootstrap_ci(np.ones((5, 3)), np.median, 50) == (1.0, 1.0)


def test_bootstrap_resamples_tasks_not_runs():
  # Four tasks of ten seeds each; two tasks win every seed, two lose every seed. The runs are
  # not independent: how many of four tasks win decides the fraction. Resampling tasks gives
  # k / 4 with k ~ Binomial(4, 1/2), whose 2.5 % and 97.5 % quantiles are 0 and 1; resampling
  # the 40 runs as if independent would give about 0.5 +- 0.16.
  wins = np.repeat(np.array([[1.0], [1.0], [0.0], [0.0]]), 10, axis=1)
  lo, hi = M.bootstrap_ci(wins, np.mean, 2000, seed=0)
  assert lo == 0.0 and hi == 1.0
  # Within a task, seeds are resampled too: one task, half its seeds winning, is not certain.
  lo, hi = M.bootstrap_ci(np.array([[1.0, 0.0, 1.0, 0.0]]), np.mean, 2000, seed=0)
  assert lo < 0.5 < hi


def test_half_decades():
  assert B.half_decade(1e-1, 1) == pytest.approx(10 ** -0.5, rel=1e-5)
  assert B.half_decade(B.half_decade(1e-1, 1), 1) == 1.0
  assert B.half_decade(1e-4, -1) == pytest.approx(10 ** -4.5, rel=1e-5)
  assert B.half_decade(3e-4, 1) == pytest.approx(1e-3)  # 3e-4 sits on the lattice at 10^-3.5


def test_cosine_schedule_warms_up_then_decays_to_zero():
  tx = B.get("adam_cosine").make(20, 0.05)(1.0)  # warm-up: 1 step
  state = tx.init({"w": np.zeros(())})
  factors = []
  g = {"w": np.ones(())}
  for _ in range(20):
    u, state = tx.update(g, state)
    factors.append(-float(u["w"]))  # Adam's first steps on a constant gradient are ~1
  assert factors[0] == pytest.approx(1.0, abs=1e-3)
  assert factors[10] == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 19)), abs=1e-3)
  assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 18 / 19)), abs=1e-3)


def test_registered_baselines_are_the_optax_optimizers_they_name():
  params = {"w": np.ones((3, 2), np.float32), "b": np.ones((2,), np.float32)}
  grads = {"w": np.arange(6.0, dtype=np.float32).reshape(3, 2) - 2.0,
           "b": np.array([0.5, -1.0], np.float32)}
  factor = B.warmup_cosine(10, 0.2)
  lr = 0.3
  expected = {
      "adam": optax.adam(lr),
      "adam_cosine": optax.adam(lambda c: lr * factor(c)),
      "adamw_cosine": optax.adamw(lambda c: lr * factor(c), weight_decay=0.1),
      "sgd_cosine": optax.sgd(lambda c: lr * factor(c), momentum=0.9),
      "muon_cosine": optax.contrib.muon(lambda c: lr * factor(c)),
  }
  assert set(expected) == set(B.REGISTRY) == set(ev.BASELINES)
  for name, ref in expected.items():
    mine = B.get(name).make(10, 0.2)(lr)
    s1, s2 = mine.init(params), ref.init(params)
    for _ in range(3):
      u1, s1 = mine.update(grads, s1, params)
      u2, s2 = ref.update(grads, s2, params)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), u1, u2)
  with pytest.raises(ValueError, match="unknown baseline 'lion'.*adam_cosine"):
    B.get("lion")


def test_eval_config_rejects_bad_values_and_records_on_a_divisor_of_n():
  with pytest.raises(ValueError, match="num_steps"):
    ev.EvalConfig(num_steps=0)
  with pytest.raises(ValueError, match="learning_rates"):
    ev.EvalConfig(learning_rates=(-1.0,))
  with pytest.raises(ValueError, match="draws"):
    ev.EvalConfig(draws="test")
  assert ev.EvalConfig(num_steps=100).every == 4 and ev.EvalConfig(num_steps=200).every == 8
  assert ev.EvalConfig(num_steps=110).every == 2       # the largest divisor of 110 <= 4.4
  assert ev.EvalConfig(num_steps=10).every == 1
  assert ev.EvalConfig(num_steps=100).length(1.5) == 152  # 150 rounded to a multiple of 4
  assert ev.EvalConfig(num_steps=100).length(4.0) == 400


def _quadratic_problem(num_tasks=2, num_seeds=2, metric=None):
  family = tasks.QuadraticFamily(dim=4)
  tp, keys = curves_lib.draw(family, jax.random.key(0), num_tasks, num_seeds)
  return B.Problem(family, "quadratic:test", tp, keys, metric)


@pytest.mark.parametrize("num_runs, max_parallel, expected", [
    (48, 32, (24, 48)), (336, 32, (31, 341)), (7, 32, (7, 7)), (64, 32, (32, 64)), (5, 1, (1, 5))])
def test_runs_go_in_groups_of_one_size(num_runs, max_parallel, expected):
  assert curves_lib.even_batches(num_runs, max_parallel) == expected


def test_a_grid_with_a_remainder_traces_the_training_loop_once():
  """8 runs, 3 side by side: three groups of 3 (one padded run), one copy of the loop."""
  problem = _quadratic_problem()
  built = []

  def make_tx(lr):
    built.append(lr)
    return optax.adam(lr)

  rates = np.array([1e-2, 3e-2])
  grouped = curves_lib.training_curves(problem.family, make_tx, rates, problem.task_params,
                                       problem.keys, 6, 2, max_parallel=3)
  assert len(built) == 1  # lax.map's remainder group would trace (and compile) it twice
  full = curves_lib.training_curves(problem.family, optax.adam, rates, problem.task_params,
                                    problem.keys, 6, 2)
  assert grouped["train"].shape == full["train"].shape == (2, 2, 2, 4)
  np.testing.assert_allclose(grouped["train"], full["train"], rtol=1e-6)
  np.testing.assert_allclose(grouped["test"], full["test"], rtol=1e-6)


def test_grid_program_matches_optax_adam_and_measures_the_fixed_sets():
  problem = _quadratic_problem()
  curves = curves_lib.training_curves(problem.family, optax.adam, np.array([1e-2, 3e-2]),
                                      problem.task_params, problem.keys, 6, 2)
  assert set(curves) == {"train", "test"} and curves["train"].shape == (2, 2, 2, 4)
  # Runs trained one at a time (memory-bounded) are the runs trained side by side.
  one_by_one = curves_lib.training_curves(problem.family, optax.adam, np.array([1e-2, 3e-2]),
                                          problem.task_params, problem.keys, 6, 2,
                                          max_parallel=1)
  np.testing.assert_allclose(one_by_one["test"], curves["test"], rtol=1e-6)
  single = curves_lib.learned_curves(problem.family, optax.adam(3e-2), problem.task_params,
                                     problem.keys, 6, 2)
  np.testing.assert_allclose(curves["train"][1], single["train"], rtol=1e-5)
  # A learned optimizer that is Adam traces the same curves as the grid's Adam.
  lopt = learned_opt.Adam(initial_learning_rate=3e-2)
  same = curves_lib.learned_curves(problem.family, lopt.transform(lopt.init(jax.random.key(0))),
                                   problem.task_params, problem.keys, 6, 2)
  np.testing.assert_allclose(same["train"], single["train"], rtol=1e-4)
  # The last point is the loss of the trained parameters on each split's fixed evaluation set.
  tp = jax.tree.map(lambda x: x[1], problem.task_params)
  key = problem.keys[1, 0]
  params = curves_lib.trained_params(problem.family, optax.adam(3e-2), tp, key, 6)
  task = problem.family.task(tp)
  k_eval = jax.random.split(key, 4)[2]
  for split in ("train", "test"):
    want = float(task.loss(params, k_eval, task.eval_batch(split)))
    np.testing.assert_allclose(single[split][1, 0, -1], want, rtol=1e-5)


def test_runs_of_different_lengths_share_their_first_steps():
  problem = _quadratic_problem()
  short = curves_lib.training_curves(problem.family, optax.adam, np.array([3e-2]),
                                     problem.task_params, problem.keys, 4, 2)
  long = curves_lib.training_curves(problem.family, optax.adam, np.array([3e-2]),
                                    problem.task_params, problem.keys, 8, 2)
  np.testing.assert_allclose(long["train"][..., :3], short["train"], rtol=1e-6)


class _Lines(logging.Handler):
  """Keeps the messages of the records it is given."""

  def __init__(self):
    super().__init__()
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def test_tuned_grid_extends_at_the_top_edge_and_caches(tmp_path, request):
  problem = _quadratic_problem()
  cfg = ev.EvalConfig(num_tasks=2, num_seeds=2, num_steps=8, learning_rates=(1e-2, 3e-2))
  cache = cache_lib.CurveCache(str(tmp_path))
  adam = B.get("adam")
  handler, level = _Lines(), B.LOG.level
  B.LOG.addHandler(handler)
  B.LOG.setLevel(logging.INFO)
  request.addfinalizer(lambda: (B.LOG.removeHandler(handler), B.LOG.setLevel(level)))
  runs, best = B.tuned_grid(problem, adam, 8, 8, cfg, cache)
  # Two progress lines per grid that ran (as it starts, and when it is done): the first two
  # rates, then one per extension.
  lines = list(handler.lines)
  assert len(lines) == 2 * (len(runs.learning_rates) - 1)
  grid = f"meta-eval:     {problem.family_id.split(':')[0]}: adam, 8 steps, 2 rate(s) x 4 runs"
  assert lines[0] == f"{grid} ..." and re.fullmatch(re.escape(grid) + r" in \d+s", lines[1])
  assert all(a.endswith(" ...") and b.startswith(a[:-4]) and not b.endswith(" ...")
             for a, b in zip(lines[::2], lines[1::2]))
  handler.lines.clear()
  lrs = runs.learning_rates.tolist()
  assert lrs[:2] == [1e-2, 3e-2] and len(lrs) > 2
  # Every added rate is half a decade above the previous top; the best rate is interior
  # (or the grid reached max_learning_rate).
  for a, b in zip(lrs[1:], lrs[2:]):
    assert b == pytest.approx(B.half_decade(a, 1), rel=1e-5)
  assert all(0 < i < len(lrs) - 1 for i in best["train"]) or lrs[-1] == 1.0
  before = cache.misses
  runs2, best2 = B.tuned_grid(problem, adam, 8, 8, cfg, cache)
  assert cache.misses == before  # every rate read back
  assert not handler.lines  # cached grids are silent
  np.testing.assert_array_equal(runs2.curves["train"], runs.curves["train"])
  np.testing.assert_array_equal(best2["test"], best["test"])


def test_longer_cosine_runs_are_tuned_around_the_1x_best_rates():
  grid = np.array([1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
  assert B.neighbourhood(np.array([0]), grid) == [1e-4, 3e-4]
  assert B.neighbourhood(np.array([2, 2]), grid) == [3e-4, 1e-3, 3e-3]
  assert B.neighbourhood(np.array([1, 4]), grid) == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]


def test_sgd_is_tuned_on_a_grid_ten_times_higher(tmp_path):
  problem = _quadratic_problem()
  cfg = ev.EvalConfig(num_tasks=2, num_seeds=2, num_steps=8, learning_rates=(1e-3, 1e-2),
                      max_learning_rate=1e-2)
  runs, _ = B.tuned_grid(problem, B.get("sgd_cosine"), 8, 8, cfg, cache_lib.CurveCache(None))
  assert runs.learning_rates.min() == pytest.approx(1e-2)
  assert runs.learning_rates.max() <= 0.1 + 1e-9


def test_cache_keys_separate_draws_lengths_schedules_and_versions(tmp_path):
  cache = cache_lib.CurveCache(str(tmp_path))
  key = dict(family="f", draws="d", num_steps=4, every=2, schedule="adam()", learning_rate=0.1)
  cache.put(cache_lib.entry_key(**key), {"train": np.arange(3.0)})
  np.testing.assert_array_equal(cache.get(cache_lib.entry_key(**key))["train"], np.arange(3.0))
  for change in ({"draws": "e"}, {"num_steps": 5}, {"schedule": "adam_cosine(warmup=0.05)"},
                 {"learning_rate": 0.2}, {"family": "g"}, {"every": 1}):
    assert cache.get(cache_lib.entry_key(**{**key, **change})) is None
  k = cache_lib.entry_key(**key)
  assert k["jax"] == jax.__version__ and k["optax"] == optax.__version__
  assert k["splits"] == ["train", "test"]
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
  """Adam as the 'learned' optimizer against tuned baselines, every number recomputed here."""
  family = tasks.QuadraticFamily(dim=4)
  cfg = ev.EvalConfig(num_tasks=3, num_seeds=2, num_steps=8, learning_rates=(1e-2, 3e-2, 1e-1),
                      bootstrap_samples=200)
  lopt = learned_opt.Adam(initial_learning_rate=3e-2)
  r = ev.evaluate_family(lopt, lopt.init(jax.random.key(0)), family, "quadratic", cfg,
                         label="adam", suite="in_distribution",
                         baselines=("adam", "adam_cosine"), envelope_factor=2.0,
                         wallclock=False)
  learned_rows = [e for e in r.entries if e["role"] == "learned"]
  calib = {e["optimizer"]: e for e in r.entries if e["role"] == "calibration"}
  assert [e["baseline"] for e in learned_rows] == ["adam", "adam_cosine"]
  assert set(calib) == {"tuned adam", "tuned adam_cosine"}
  assert all(e["reference"] == "adam" and e["baseline"] == "adam" for e in calib.values())
  e = learned_rows[0]
  for split, tag in (("train", ""), ("test", "_test")):
    learned = np.asarray(e[f"final_loss{tag}_learned"])
    base = np.asarray(e[f"final_loss{tag}_baseline"])
    assert learned.shape == (3, 2)
    assert e[f"win_fraction{tag}"] == np.mean(learned < base)
    assert e[f"final_loss_ratio{tag}_median"] == pytest.approx(np.median(learned / base))
    assert e[f"win_fraction{tag}_ci"][0] <= e[f"win_fraction{tag}"] <= e[f"win_fraction{tag}_ci"][1]
  assert e["speedup_median"] == np.median(e["speedup_per_run"])
  assert max(np.ravel(e["speedup_per_run"])) <= 2.0
  # Recompute the envelope speed-ups of the learned runs and of tuned Adam's own runs.
  problem = ev.suites.problems(family, "quadratic", cfg)[0]
  runs, best = B.tuned_grid(problem, B.get("adam"), 16, 8, cfg, cache_lib.CurveCache(None))
  env = M.seed_mean_envelope(runs.curves["train"])
  got, _ = M.speedup_envelope(np.asarray(e["final_loss_learned"]), env, runs.steps, 8, 2.0)
  np.testing.assert_allclose(got, e["speedup_per_run"])
  tuned = M.pick(runs.curves["train"][..., :8 // cfg.every + 1], best["train"])[..., -1]
  np.testing.assert_allclose(tuned, e["final_loss_baseline"], rtol=1e-6)
  own, _ = M.speedup_envelope(tuned, env, runs.steps, 8, 2.0)
  np.testing.assert_allclose(own, calib["tuned adam"]["speedup_per_run"])
  assert calib["tuned adam"].get("win_fraction") is None  # not scored against itself
  cos = np.asarray(calib["tuned adam_cosine"]["final_loss_learned"])
  assert calib["tuned adam_cosine"]["win_fraction"] == np.mean(cos < tuned)
  # Draws are a function of (seed, stream, family name) only: the same tasks for every optimizer.
  p1 = ev.suites.problems(family, "quadratic", cfg)[0]
  assert p1.draws == problem.draws
  assert ev.suites.problems(family, "other_name", cfg)[0].draws != p1.draws


def test_report_and_dev_draws_are_disjoint():
  family = tasks.get("digits_mlp")
  dev = ev.suites.problems(family, "digits_mlp", ev.EvalConfig(num_tasks=16, num_seeds=3))[0]
  rep = ev.suites.problems(family, "digits_mlp",
                           ev.EvalConfig(num_tasks=16, num_seeds=3, draws="report"))[0]
  keys_dev = {bytes(np.asarray(jax.random.key_data(k))) for k in dev.keys.ravel()}
  keys_rep = {bytes(np.asarray(jax.random.key_data(k))) for k in rep.keys.ravel()}
  assert len(keys_dev) == len(keys_rep) == 48 and not keys_dev & keys_rep
  scale_dev = set(np.asarray(dev.task_params["init_scale"]).tolist())
  scale_rep = set(np.asarray(rep.task_params["init_scale"]).tolist())
  assert not scale_dev & scale_rep
  # dev is the stream every report before the split used (recipe work was tuned on it).
  old = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), ev.suites.EVAL_STREAM_TAG),
                           ev.suites.zlib.crc32(b"digits_mlp") & 0x7FFFFFFF)
  np.testing.assert_array_equal(jax.random.key_data(ev.suites.eval_key(0, "digits_mlp", "dev")),
                                jax.random.key_data(old))


def test_sample_metric_is_read_at_n_steps_for_every_optimizer():
  """Constant Adam's grid runs 4N steps; its metric must be read after N, like the learned
  optimizer's (a metric read after the grid's last step would compare N with 4N)."""
  metric = lambda task, params, key: jnp.sum(params["x"] ** 2)
  problem = _quadratic_problem(num_tasks=2, num_seeds=2, metric=metric)
  cfg = ev.EvalConfig(num_tasks=2, num_seeds=2, num_steps=8, learning_rates=(1e-2, 3e-2, 1e-1))
  tx = optax.sgd(1e-3)
  learned = curves_lib.learned_curves(problem.family, tx, problem.task_params, problem.keys, 8,
                                      cfg.every)
  learned_metric = curves_lib.final_metrics(problem.family, lambda _: tx, np.zeros(2),
                                            problem.task_params, problem.keys, 8, metric)
  table, _ = compare.group_runs(learned, learned_metric, problem, cfg,
                                cache_lib.CurveCache(None), ("adam",), 4.0)
  lrs = table["adam/train/best_lr"]
  for t in range(2):
    tp = jax.tree.map(lambda x, t=t: x[t], problem.task_params)
    for s in range(2):
      at_n = curves_lib.trained_params(problem.family, optax.adam(float(lrs[t])), tp,
                                       problem.keys[t, s], 8)
      at_4n = curves_lib.trained_params(problem.family, optax.adam(float(lrs[t])), tp,
                                        problem.keys[t, s], 32)
      np.testing.assert_allclose(table["adam/metric"][t, s], np.sum(at_n["x"] ** 2), rtol=1e-5)
      assert abs(table["adam/metric"][t, s] - float(np.sum(at_4n["x"] ** 2))) > 1e-4


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


def test_compare_concat_joins_runs_in_order_and_keeps_shared_keys():
  a = {"learned/train/final": np.array([[1.0, 2.0]]), "adam/metric": np.array([[5.0, 6.0]])}
  b = {"learned/train/final": np.array([[3.0, 4.0], [7.0, 8.0]])}
  j = compare.concat([a, b])
  np.testing.assert_array_equal(j["learned/train/final"], [[1.0, 2.0], [3.0, 4.0], [7.0, 8.0]])
  assert "adam/metric" not in j  # only keys every group has


def test_learned_curves_and_trained_params_pass_the_loss_to_a_learned_schedule():
  problem = _quadratic_problem(num_tasks=1, num_seeds=1)
  lopt = learned_opt.chain(
      learned_opt.MLPOptimizer(hidden_sizes=(4,), time_scales=(1.0,)),
      learned_opt.LearnedSchedule(hidden_size=2, time_scales=(1.0,), loss_decays=(0.5,)))
  theta = learned_opt.inits.adam_like(lopt, jax.random.key(0))
  # s = 3 relu(-log(ℓ / ê_0.5)): larger steps while the loss falls, so the loss matters.
  col = 1 + 2  # after the time and horizon features
  sched = theta["schedule"]
  theta["schedule"] = dict(sched, w0=sched["w0"].at[:, 0].set(0.0).at[col, 0].set(-1.0),
                           w1=sched["w1"].at[0, 0].set(3.0))
  tx = lopt.transform(theta)
  curves = curves_lib.learned_curves(problem.family, tx, problem.task_params, problem.keys, 5, 1)
  tp = jax.tree.map(lambda x: x[0], problem.task_params)
  key = problem.keys[0, 0]
  params = curves_lib.trained_params(problem.family, tx, tp, key, 5)
  task = problem.family.task(tp)
  k_eval = jax.random.split(key, 4)[2]
  final = float(task.loss(params, k_eval, task.eval_batch("train")))
  np.testing.assert_allclose(curves["train"][0, 0, -1], final, rtol=1e-5)
  # Without the loss the schedule stays at s = 0: a different run.
  plain = lopt.transform(dict(theta, schedule=dict(sched, w1=sched["w1"] * 0.0)))
  other = curves_lib.learned_curves(problem.family, plain, problem.task_params, problem.keys, 5, 1)
  assert abs(float(other["train"][0, 0, -1]) - final) > 1e-3 * abs(final)
