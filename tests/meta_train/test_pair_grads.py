"""The estimators' per-pair gradients and their combination, on inputs worked out by hand."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_train.estimators import antithetic
from meta_train.estimators import estimator as est_lib
from meta_train.estimators.pes import pes_accumulate, pes_pair_grads
from meta_train.estimators.truncated_es import es_pair_grads


def _close(tree, expected):
  chex.assert_trees_all_close(tree, {k: np.asarray(v, np.float32) for k, v in expected.items()},
                              rtol=1e-6)


def test_es_pair_grads():
  # Two pairs, sigma = 0.5 so 2 sigma^2 = 0.5; L+ - L- = (3 - 1, 1 - 2) = (2, -1), so the
  # per-pair scales are 2 / 0.5 = 4 and -1 / 0.5 = -2.
  eps = {"a": jnp.array([[1.0, 2.0], [-1.0, 0.5]]), "b": jnp.array([0.1, -0.2])}
  g = es_pair_grads(eps, jnp.array([3.0, 1.0]), jnp.array([1.0, 2.0]), 0.5)
  _close(g, {"a": [[4.0, 8.0], [2.0, -1.0]], "b": [0.4, 0.4]})


def test_pes_pair_grads_split_at_the_reset():
  # sigma = 1 (2 sigma^2 = 2), K = 4.
  # Pair 0: xi = 2 + 1 = 3; deltas (1, 1 | 2, 2) with a reset before step 2:
  #   before = (1 + 1) / 4 = 0.5 goes with xi, after = (2 + 2) / 4 = 1 with eps:
  #   3 * 0.5 / 2 + 1 * 1 / 2 = 1.25.
  # Pair 1: xi = 0.5 - 2 = -1.5; deltas all -1, no reset: before = -1, after = 0:
  #   -1.5 * -1 / 2 = 0.75.
  eps = {"w": jnp.array([[1.0], [-2.0]])}
  acc = {"w": jnp.array([[2.0], [0.5]])}
  pos = jnp.array([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
  neg = jnp.array([[0.0, 1.0, 1.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
  after = jnp.array([[False, False, True, True], [False, False, False, False]])
  _close(pes_pair_grads(eps, acc, pos, neg, after, 1.0), {"w": [[1.25], [0.75]]})
  # Without any reset PES is ES with the accumulated perturbation xi = acc + eps.
  none = jnp.zeros_like(after)
  _close(pes_pair_grads(eps, acc, pos, neg, none, 1.0),
         es_pair_grads({"w": acc["w"] + eps["w"]}, pos.mean(-1), neg.mean(-1), 1.0))


def test_sign_deltas_keep_only_which_member_did_better():
  # ES: (2, -1, 0) -> s * (1, -1, 0) with s = 0.5.
  np.testing.assert_array_equal(antithetic.sign_deltas(jnp.array([2.0, -1.0, 0.0]), 0.5),
                                [0.5, -0.5, 0.0])
  # PES: the sign of each pair's mean over the truncation, at every step: pair 0's mean is
  # (1 + 1 - 3) / 3 < 0 although two of its steps are positive.
  d = jnp.array([[1.0, 1.0, -3.0], [0.1, 0.0, 0.2]])
  np.testing.assert_array_equal(antithetic.sign_deltas(d, 2.0), [[-2.0] * 3, [2.0] * 3])


def test_es_pair_grads_with_sign_delta():
  # Deltas (2, -1) -> (1, -1) with s = 1; 2 sigma^2 = 0.5: scales 2 and -2. A pair whose
  # losses differ by 1,000 counts as much as one whose differ by 2.
  eps = {"a": jnp.array([[1.0, 2.0], [-1.0, 0.5]])}
  _close(es_pair_grads(eps, jnp.array([3.0, 1.0]), jnp.array([1.0, 2.0]), 0.5, 1.0),
         {"a": [[2.0, 4.0], [2.0, -1.0]]})
  _close(es_pair_grads(eps, jnp.array([1001.0, 1.0]), jnp.array([1.0, 2.0]), 0.5, 1.0),
         {"a": [[2.0, 4.0], [2.0, -1.0]]})


def test_pes_pair_grads_with_sign_delta():
  # As test_pes_pair_grads_split_at_the_reset, with s = 1: pair 0's mean delta 1.5 > 0 gives
  # deltas (1, 1 | 1, 1): before = 0.5 with xi = 3, after = 0.5 with eps = 1:
  # 3 * 0.5 / 2 + 1 * 0.5 / 2 = 1. Pair 1's deltas stay -1: 0.75 as before.
  eps = {"w": jnp.array([[1.0], [-2.0]])}
  acc = {"w": jnp.array([[2.0], [0.5]])}
  pos = jnp.array([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
  neg = jnp.array([[0.0, 1.0, 1.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
  after = jnp.array([[False, False, True, True], [False, False, False, False]])
  _close(pes_pair_grads(eps, acc, pos, neg, after, 1.0, 1.0), {"w": [[1.0], [0.75]]})


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan"), True])
def test_sign_delta_must_be_a_finite_non_negative_number(bad):
  import learned_opt  # pylint: disable=import-outside-toplevel
  from meta_train.estimators import registry  # pylint: disable=import-outside-toplevel
  from tasks.quadratic import QuadraticFamily  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="sign_delta: must be >= 0 and finite"):
    registry.make_estimator("pes", learned_opt.SGDMomentum(), QuadraticFamily(dim=2),
                            sign_delta=bad)


def test_pes_accumulate_restarts_at_a_reset():
  # Pair 0 started a new run: its accumulator restarts from eps; pair 1 adds eps.
  acc = {"w": jnp.array([[2.0, 1.0], [0.5, 0.0]])}
  eps = {"w": jnp.array([[1.0, -1.0], [-2.0, 3.0]])}
  _close(pes_accumulate(acc, eps, jnp.array([True, False])),
         {"w": [[1.0, -1.0], [-1.5, 3.0]]})


def test_combine_means_pairs_and_counts_non_finite_entries():
  # Per-pair estimates (1, 2) and (3, 6): mean (2, 4), norm sqrt(20); unbiased variances
  # 2 and 8 sum to 10, divided by the 2 pairs: 5.
  g, m = est_lib.combine({"x": jnp.array([[1.0, 2.0], [3.0, 6.0]])}, jnp.float32(0.5),
                         jnp.int32(3), 40)
  _close(g, {"x": [2.0, 4.0]})
  np.testing.assert_allclose(float(m["grad_norm"]), np.sqrt(20.0), rtol=1e-6)
  np.testing.assert_allclose(float(m["grad_variance"]), 5.0, rtol=1e-6)
  assert (float(m["meta_loss"]), int(m["inner_steps"])) == (0.5, 40)
  assert (int(m["nonfinite_loss"]), int(m["nonfinite_grad"]), int(m["nonfinite"])) == (3, 0, 3)
  # A NaN entry is zeroed before the mean and counted: (0 + 3) / 2 = 1.5.
  g, m = est_lib.combine({"x": jnp.array([[jnp.nan, 2.0], [3.0, 6.0]])}, jnp.float32(0.5),
                         jnp.int32(0), 40)
  _close(g, {"x": [1.5, 4.0]})
  assert (int(m["nonfinite_grad"]), int(m["nonfinite"])) == (1, 1)


def _tiny_estimator(name):
  import learned_opt  # pylint: disable=import-outside-toplevel
  from meta_train.estimators import registry  # pylint: disable=import-outside-toplevel
  from tasks.quadratic import QuadraticFamily  # pylint: disable=import-outside-toplevel
  lopt = learned_opt.SGDMomentum()
  est = registry.make_estimator(name, lopt, QuadraticFamily(dim=2), num_pairs=3, sigma=0.1,
                                truncation_length=3, min_horizon=4, max_horizon=5)
  theta = lopt.init(jax.random.key(0))
  return est, theta, est.init(jax.random.key(1), theta)


@pytest.mark.parametrize("name", ["es", "pes"])
def test_estimate_is_the_mean_of_the_pure_per_pair_grads(name):
  """The antithetic base: ε from the key, the paired unroll, the pure function, the mean."""
  est, theta, state = _tiny_estimator(name)
  key = jax.random.key(2)
  grad, new_state, metrics = jax.jit(est.estimate)(theta, state, key)
  eps = antithetic.antithetic_perturbation(key, theta, 0.1, 3)
  start = state.particles if name == "pes" else antithetic.repeat_pair(state.particles)
  particles, out = jax.jit(est.unroll_pairs)(theta, eps, start)
  pos, neg = antithetic.split_pair(out)
  if name == "pes":
    per_pair = pes_pair_grads(eps, state.accumulator, pos.losses, neg.losses, pos.after_reset,
                              0.1)
    np.testing.assert_allclose(new_state.accumulator["log_lr"],
                               pes_accumulate(state.accumulator, eps, pos.reset)["log_lr"],
                               rtol=1e-6)
  else:
    per_pair = es_pair_grads(eps, pos.meta_loss, neg.meta_loss, 0.1)
    np.testing.assert_array_equal(new_state.particles.run_key,
                                  antithetic.split_pair(particles)[0].run_key)
  # Two jitted programs fuse differently: L+ - L- (small) carries float32 rounding of the
  # losses, amplified by 1 / (2 sigma^2); a wrong formula would be off by far more.
  for k in theta:
    np.testing.assert_allclose(grad[k], np.mean(np.asarray(per_pair[k]), axis=0), rtol=1e-3,
                               atol=1e-7)
  assert int(metrics["inner_steps"]) == 2 * 3 * 3
  np.testing.assert_allclose(float(metrics["meta_loss"]), float(np.mean(out.meta_loss)),
                             rtol=1e-6)
