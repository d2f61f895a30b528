"""The orthogonalising harness (:mod:`learned_opt.orthogonalize`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optax.contrib import _muon

import learned_opt
from learned_opt import inits
from learned_opt import testing
from learned_opt.orthogonalize import NS_COEFFS, Orthogonalize, newton_schulz


def _ill_conditioned(shape, cond=100.0, seed=0):
  """A matrix with singular values log-spaced from 1 down to 1/cond."""
  m, n = shape
  k = min(m, n)
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.normal(size=(m, k)))
  v, _ = np.linalg.qr(rng.normal(size=(n, k)))
  return (u * np.geomspace(1.0, 1.0 / cond, k)) @ v.T


@pytest.mark.parametrize("shape", [(6, 11), (11, 6)])
def test_newton_schulz_is_muons_iteration_and_near_orthogonal(shape):
  x = jnp.asarray(_ill_conditioned(shape, cond=20.0), jnp.float32)
  reference = _muon.orthogonalize_via_newton_schulz(x, jnp.asarray(NS_COEFFS), 5)
  np.testing.assert_allclose(newton_schulz(x), reference, atol=2e-6)
  s = np.linalg.svd(np.asarray(newton_schulz(x)), compute_uv=False)
  # Condition number 20 in, singular values within Muon's band out.
  assert s.min() > 0.6 and s.max() < 1.25, s
  np.testing.assert_array_equal(newton_schulz(jnp.zeros(shape)), np.zeros(shape))
  with pytest.raises(ValueError, match="takes a matrix"):
    newton_schulz(jnp.ones(3))


def _apply(theta, updates, lopt=None):
  tx = (lopt or Orthogonalize()).scale_by(theta)
  return tx.update(updates, tx.init(updates))[0]


def test_matrix_update_is_the_rms_matched_mix_scaled_and_other_leaves_pass():
  u = jnp.asarray(_ill_conditioned((8, 5), cond=100.0, seed=1), jnp.float32)
  mix, beta = 0.7, 0.3
  theta = {"mix": jnp.asarray(math.log(mix / (1 - mix))), "log_scale": jnp.asarray(beta)}
  updates = {"w": u, "b": jnp.arange(5.0), "i": jnp.arange(3), "s": jnp.asarray(2.0),
             "row": jnp.ones((1, 4))}
  out = _apply(theta, updates)
  o = np.asarray(newton_schulz(u), np.float64)
  rms = lambda a: np.sqrt(np.mean(np.square(a)))
  o *= rms(u) / rms(o)
  np.testing.assert_allclose(out["w"], math.exp(beta) * ((1 - mix) * np.asarray(u) + mix * o),
                             rtol=2e-5, atol=1e-7)
  for k in ("b", "i", "s", "row"):  # vectors, ints, scalars and 1 x n pass unchanged
    np.testing.assert_array_equal(out[k], updates[k])
  # The whole step keeps the rule's RMS when β = 0 and the mix is pure.
  pure = _apply({"mix": jnp.asarray(30.0), "log_scale": jnp.asarray(0.0)}, {"w": u})["w"]
  np.testing.assert_allclose(rms(np.asarray(pure)), rms(np.asarray(u)), rtol=1e-5)
  s = np.linalg.svd(np.asarray(pure), compute_uv=False)
  assert s.max() / s.min() < 2.0  # condition number 100 in, near-orthogonal out


def test_equal_singular_values_are_left_alone_and_nan_stays_in_its_entry():
  q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(6, 6)))
  u = jnp.asarray(0.03 * q, jnp.float32)  # already orthogonal: NS keeps the direction
  theta = Orthogonalize(initial_mix=0.5).init(jax.random.key(0))
  np.testing.assert_allclose(_apply(theta, {"w": u})["w"], u, rtol=1e-4, atol=1e-7)
  bad = u.at[1, 2].set(jnp.nan)
  out = _apply(theta, {"w": bad})["w"]
  assert np.isnan(out[1, 2]) and np.isfinite(np.delete(np.asarray(out).ravel(), 1 * 6 + 2)).all()
  half = _apply(theta, {"w": u.astype(jnp.bfloat16)})["w"]
  assert half.dtype == jnp.bfloat16


def test_init_and_bad_input():
  theta = Orthogonalize(initial_mix=0.9).init(jax.random.key(0))
  assert float(jax.nn.sigmoid(theta["mix"])) == pytest.approx(0.9, rel=1e-6)
  assert float(theta["log_scale"]) == 0.0
  with pytest.raises(ValueError, match="initial_mix must be in"):
    Orthogonalize(initial_mix=1.0)
  with pytest.raises(ValueError, match="steps must be a positive int"):
    Orthogonalize(steps=0)
  with pytest.raises(ValueError, match="orthogonalize"):
    Orthogonalize().scale_by({"mix": jnp.zeros(2), "log_scale": jnp.zeros(())})


def test_rule_in_the_harness_is_a_conforming_chain_with_an_adam_like_start():
  lopt = learned_opt.chain(learned_opt.MLPOptimizer(hidden_sizes=(4,)), Orthogonalize())
  theta = inits.adam_like(lopt, jax.random.key(1), learning_rate=1e-2)
  assert set(theta) == {"mlp", "orthogonalize"}
  testing.check_learned_optimizer(lopt, theta, checks=(
      "shapes_and_dtypes", "non_finite_gradients", "save_load_round_trip", "multisteps"))
  # The first step of a matrix is the Adam-like step, orthogonalised at the same RMS.
  g = {"w": jnp.asarray(_ill_conditioned((5, 4), cond=50.0, seed=3), jnp.float32)}
  tx = lopt.transform(theta)
  step = tx.update(g, tx.init(g), g)[0]["w"]
  rule = learned_opt.MLPOptimizer(hidden_sizes=(4,)).transform(theta["mlp"])
  plain = rule.update(g, rule.init(g), g)[0]["w"]
  rms = lambda a: float(np.sqrt(np.mean(np.square(np.asarray(a)))))
  # RMS(0.1 u + 0.9 o) <= 0.1 RMS(u) + 0.9 RMS(o) = RMS(u), equal only when o = u.
  assert 0.5 * rms(plain) < rms(step) <= rms(plain) * (1 + 1e-5)
  cond = lambda a: (lambda s: s.max() / s.min())(np.linalg.svd(np.asarray(a), compute_uv=False))
  assert cond(step) < 0.5 * cond(plain), (cond(step), cond(plain))


@pytest.mark.parametrize("shape, kernels, matrix", [
    ((3, 3, 4, 8), True, (36, 8)), ((3, 3, 4, 8), False, None), ((5, 4), False, (5, 4)),
    ((3, 1, 1), True, None), ((2, 3, 1), True, None), ((7,), True, None)])
def test_which_tensors_are_matrices(shape, kernels, matrix):
  from learned_opt.orthogonalize import as_matrix_shape  # pylint: disable=import-outside-toplevel
  assert as_matrix_shape(shape, kernels) == matrix


def test_with_kernels_a_conv_kernel_is_mixed_as_its_fan_in_by_out_matrix():
  """A (3, 3, 4, 8) kernel: the step is the mix computed on the (36, 8) matrix, reshaped back;
  without ``kernels`` it passes unchanged."""
  u = jnp.asarray(_ill_conditioned((36, 8), cond=50.0, seed=4), jnp.float32)
  theta = Orthogonalize(initial_mix=0.6).init(jax.random.key(0))
  kernel = u.reshape(3, 3, 4, 8)
  as_matrix = _apply(theta, {"w": u})["w"]
  out = _apply(theta, {"k": kernel}, Orthogonalize(kernels=True))["k"]
  assert out.shape == (3, 3, 4, 8)
  np.testing.assert_allclose(out.reshape(36, 8), as_matrix, rtol=1e-6, atol=1e-8)
  assert not np.allclose(out, kernel, rtol=1e-2)
  np.testing.assert_array_equal(_apply(theta, {"k": kernel})["k"], kernel)
  bad = kernel.at[0, 1, 2, 3].set(jnp.nan)
  out = _apply(theta, {"k": bad}, Orthogonalize(kernels=True))["k"]
  assert np.isnan(out[0, 1, 2, 3]) and np.isfinite(out).sum() == out.size - 1
  with pytest.raises(ValueError, match="kernels must be a bool"):
    Orthogonalize(kernels=1)
