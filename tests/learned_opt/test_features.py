"""The feature kernels shared by both learned-optimizer architectures (learned_opt.features)."""

import jax
import jax.numpy as jnp
import numpy as np

from learned_opt import features as F


def test_ema_with_an_exact_one_minus_decay():
  x, acc = jnp.asarray([2.0, -4.0]), jnp.asarray([1.0, 1.0])
  np.testing.assert_allclose(F.ema(x, acc, 0.75), [0.75 + 0.5, 0.75 - 1.0])
  # A learned decay sigmoid(30) rounds to 1 in float32; sigmoid(-30) keeps 1 - β exact.
  beta, one_minus = jax.nn.sigmoid(30.0), jax.nn.sigmoid(-30.0)
  assert float(beta) == 1.0
  out = F.ema(jnp.asarray([1e30]), jnp.asarray([0.0]), beta, one_minus)
  np.testing.assert_allclose(out, [1e30 * np.exp(-30.0)], rtol=1e-5)
  assert float(F.ema(jnp.asarray([1e30]), jnp.asarray([0.0]), beta)[0]) == 0.0
  assert F.ema(x, acc.astype(jnp.bfloat16), 0.5).dtype == jnp.bfloat16


def test_finite_entries_and_nan_unless_finite():
  step = jnp.asarray([1.0, 2.0, 3.0, 4.0])
  feats = [jnp.asarray([0.0, jnp.inf, 1.0, 1.0]), jnp.asarray([0.0, 0.0, -jnp.inf, jnp.nan])]
  finite = F.finite_entries(feats)
  np.testing.assert_array_equal(finite, [True, False, False, False])
  out = np.asarray(F.nan_unless_finite(step, finite))
  assert out[0] == 1.0 and np.all(np.isnan(out[1:]))
  np.testing.assert_array_equal(F.nan_unless_finite(step, F.finite_entries([jnp.ones(4)])), step)


def test_tanh_time_features_at_step_zero_and_late():
  np.testing.assert_allclose(F.tanh_time_features(0, (1.0, 10.0)), [np.tanh(-1.0)] * 2,
                             rtol=1e-6)
  np.testing.assert_allclose(F.tanh_time_features(10, (1.0, 10.0)), np.tanh([9.0, 0.0]),
                             rtol=1e-6)
