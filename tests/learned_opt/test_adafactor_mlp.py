"""AdafactorMLPOptimizer: factored statistics, memory, features, output form, config."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt import adafactor_mlp

LOPT = learned_opt.AdafactorMLPOptimizer()
MP = LOPT.init(jax.random.key(0))


@pytest.fixture(scope="module")
def update():
  return jax.jit(lambda mp, g, s, p: LOPT.scale_by(mp).update(g, s, p))


def test_registered_and_meta_param_shapes():
  assert learned_opt.registry()["adafactor_mlp"] is learned_opt.AdafactorMLPOptimizer
  f, t, h = LOPT.num_features, len(LOPT.time_scales), LOPT.hidden_size
  assert (f, h) == (8, 4)
  assert jax.tree.map(jnp.shape, MP) == {
      "mlp": {"w1": (f + t, h), "b1": (h,), "w2": (h, 2), "b2": (2,)},
      "momentum_logits": (3,), "factored_logits": (2,)}
  np.testing.assert_allclose(jax.nn.sigmoid(MP["momentum_logits"]), LOPT.momentum_decays,
                             rtol=1e-6)
  np.testing.assert_allclose(jax.nn.sigmoid(MP["factored_logits"]), LOPT.factored_decays,
                             rtol=1e-6)


def test_state_memory_at_most_five_floats_per_param_plus_rows_and_cols():
  params = {"mat": jnp.ones((64, 32)), "conv": jnp.ones((3, 3, 16, 8)), "vec": jnp.ones(10),
            "scalar": jnp.ones(())}
  state = LOPT.scale_by(MP).init(params)
  floats = adafactor_mlp.state_floats_per_leaf(state)
  assert floats["mat"] == 3 * 64 * 32 + 2 * (64 + 32)
  assert floats["conv"] == 3 * 9 * 16 * 8 + 2 * 9 * (16 + 8)
  assert floats["vec"] == 5 * 10
  assert floats["scalar"] == 5


def test_factored_statistics_follow_adafactor(update):
  # For a rank-1 G², Adafactor's R Cᵀ / mean(R) reconstructs V exactly (arXiv 1804.04235).
  params = {"w": jnp.zeros((3, 4))}
  u, v = jnp.asarray([1.0, 2.0, 0.5]), jnp.asarray([0.3, 1.0, 2.0, 0.1])
  grads = {"w": jnp.sqrt(u[:, None] * v[None, :])}
  state = LOPT.scale_by(MP).init(params)
  _, new = update(MP, grads, state, params)
  beta = 1 - np.asarray(jax.nn.sigmoid(-MP["factored_logits"]), np.float64)
  g2 = np.asarray(grads["w"], np.float64) ** 2
  for j in range(2):
    np.testing.assert_allclose(new.row[j]["w"], (1 - beta[j]) * g2.mean(1), rtol=1e-5)
    np.testing.assert_allclose(new.col[j]["w"], (1 - beta[j]) * g2.mean(0), rtol=1e-5)
    row, col = np.asarray(new.row[j]["w"]), np.asarray(new.col[j]["w"])
    np.testing.assert_allclose(np.outer(row / row.mean(), col), (1 - beta[j]) * g2, rtol=1e-5)
  for k, b in enumerate(1 - np.asarray(jax.nn.sigmoid(-MP["momentum_logits"]), np.float64)):
    np.testing.assert_allclose(new.mu[k]["w"], (1 - b) * np.asarray(grads["w"]), rtol=1e-5)
  assert int(new.count) == 1


def test_rank_below_two_uses_diagonal_second_moment(update):
  params = {"v": jnp.zeros(3)}
  grads = {"v": jnp.asarray([1.0, -2.0, 3.0])}
  _, new = update(MP, grads, LOPT.scale_by(MP).init(params), params)
  for j, b in enumerate(1 - np.asarray(jax.nn.sigmoid(-MP["factored_logits"]), np.float64)):
    np.testing.assert_allclose(new.row[j]["v"], (1 - b) * np.asarray([1.0, 4.0, 9.0]),
                               rtol=1e-5)
    assert new.col[j]["v"].shape == (0,)


def _manual_step(mp, lopt, g, p):
  """A direct NumPy transcription of the documented first step (t = 0 updates so far, zero state).

  ``1/sqrt(V̂)`` is Adafactor's, from the row and column factors floored at ε₁ = 1e-30; the
  normalisers are the shared kernel's (``learned_opt.features``, 1e-5 under each feature's mean
  square). Non-finite entries of ``G²`` count as zero in the row and column statistics and
  non-finite features as zero in the normalisers.
  """
  g, p = np.asarray(g, np.float64), np.asarray(p, np.float64)
  # 1 - sigmoid(x) = 1 / (1 + e^x)
  one_m_betas = 1 / (1 + np.exp(np.asarray(mp["momentum_logits"], np.float64)))
  one_m_fbetas = 1 / (1 + np.exp(np.asarray(mp["factored_logits"], np.float64)))
  mus = [c * g for c in one_m_betas]
  with np.errstate(invalid="ignore", over="ignore"):
    g2 = np.where(np.isfinite(g * g), g * g, 0.0) + 1e-30
    rsq = []
    for c in one_m_fbetas:
      row, col = c * g2.mean(-1), c * g2.mean(-2)
      row_factor = 1 / np.sqrt(np.maximum(row / row.mean(), 1e-30))
      rsq.append(np.outer(row_factor, 1 / np.sqrt(np.maximum(col, 1e-30))))
    feats = [p, g, *mus, *(g * r for r in rsq), mus[1] * rsq[-1]]
    finite = np.all([np.isfinite(f) for f in feats], axis=0)
    feats = [np.where(np.isfinite(f), f, 0.0) for f in feats]
    feats = [f / np.sqrt(np.mean(f * f) + 1e-5) for f in feats]
  t = np.tanh(0.0 / np.asarray(lopt.time_scales) - 1.0)
  w1, b1 = np.asarray(mp["mlp"]["w1"], np.float64), np.asarray(mp["mlp"]["b1"], np.float64)
  w2, b2 = np.asarray(mp["mlp"]["w2"], np.float64), np.asarray(mp["mlp"]["b2"], np.float64)
  x = np.stack(feats + [np.broadcast_to(tt, g.shape) for tt in t], -1)
  h = np.maximum(x @ w1 + b1, 0)
  out = h @ w2 + b2
  step = out[..., 0] * np.exp(lopt.exp_mult * out[..., 1]) * lopt.step_mult
  return np.where(finite, step, np.nan)


def test_first_step_matches_numpy_transcription(update):
  # Larger weights (a non-trivial network); the decay logits grow so that sigmoid rounds the
  # slowest decay to 1 in float32, which must not produce NaN.
  mp = jax.tree.map(lambda x: x * 3.0, MP)
  mp["mlp"]["b1"] = jnp.asarray([0.1, -0.2, 0.3, 0.0])
  mp["mlp"]["b2"] = jnp.asarray([0.05, 2.0])
  k1, k2 = jax.random.split(jax.random.key(1))
  params = {"w": jax.random.normal(k1, (4, 3))}
  grads = {"w": jax.random.normal(k2, (4, 3))}
  out, _ = update(mp, grads, LOPT.scale_by(mp).init(params), params)
  ref = _manual_step(mp, LOPT, grads["w"], params["w"])
  np.testing.assert_allclose(out["w"], ref, rtol=2e-4, atol=1e-9)


def test_features_are_scale_invariant_in_the_gradient(update):
  # Every gradient feature is normalised by its RMS over the tensor, so scaling G changes nothing
  # once the features' mean squares dwarf the normalisers' ε (1e-5); for tiny gradients the ε
  # dominates and the step changes.
  k1, k2 = jax.random.split(jax.random.key(2))
  params = {"w": jax.random.normal(k1, (5, 4))}
  grads = {"w": jax.random.normal(k2, (5, 4))}
  state = LOPT.scale_by(MP).init(params)
  a, _ = update(MP, {"w": 1e2 * grads["w"]}, state, params)
  b, _ = update(MP, {"w": 1e5 * grads["w"]}, state, params)
  np.testing.assert_allclose(a["w"], b["w"], rtol=1e-4)
  tiny, _ = update(MP, {"w": 1e-6 * grads["w"]}, state, params)
  assert not np.allclose(tiny["w"], a["w"], rtol=1e-2)


def test_output_scale_is_step_mult_times_direction():
  # With exp_mult = 0 the step is exactly step_mult * direction: doubling step_mult doubles it.
  small = learned_opt.AdafactorMLPOptimizer(exp_mult=0.0, step_mult=1e-3)
  big = dataclasses.replace(small, step_mult=2e-3)
  params = {"w": jnp.ones((2, 3)) * jnp.arange(6.0).reshape(2, 3)}
  grads = {"w": jnp.full((2, 3), 0.5).at[0, 0].set(-1.0)}
  run = lambda lopt: jax.jit(lopt.scale_by(MP).update)(grads, lopt.scale_by(MP).init(params),
                                                        params)[0]
  ua, ub = run(small), run(big)
  np.testing.assert_array_equal(ub["w"], 2 * ua["w"])
  assert float(jnp.max(jnp.abs(ua["w"]))) < 1e-2  # a fresh optimizer takes tiny steps


def test_meta_gradient_reaches_the_decay_logits():
  params = {"w": jnp.ones((3, 2))}

  def meta_loss(mp):
    tx = LOPT.transform(mp)
    p, s = params, tx.init(params)
    for _ in range(2):
      g = jax.tree.map(lambda x: 2 * x - 1.0, p)
      u, s = tx.update(g, s, p)
      p = jax.tree.map(lambda a, b: a + b, p, u)
    return jnp.sum(p["w"] ** 2)

  grad = jax.jit(jax.grad(meta_loss))(MP)
  assert bool(jnp.all(grad["momentum_logits"] != 0))
  assert bool(jnp.all(grad["factored_logits"] != 0))


@pytest.mark.parametrize("bad", [
    {"hidden_size": 0}, {"momentum_decays": ()}, {"factored_decays": (1.0,)},
    {"time_scales": (0.0,)}])
def test_invalid_config_raises(bad):
  with pytest.raises(ValueError):
    learned_opt.AdafactorMLPOptimizer(**bad)


def test_meta_params_of_another_config_are_rejected():
  other = learned_opt.AdafactorMLPOptimizer(hidden_size=8).init(jax.random.key(0))
  with pytest.raises(ValueError, match="w1"):
    LOPT.scale_by(other)


def test_config_round_trip_through_json_types():
  lopt = learned_opt.AdafactorMLPOptimizer(hidden_size=2, momentum_decays=[0.8],
                                           time_scales=[10, 100])
  assert lopt.momentum_decays == (0.8,) and lopt.time_scales == (10.0, 100.0)
  assert learned_opt.AdafactorMLPOptimizer.from_config(lopt.config()) == lopt


def test_non_finite_gradient_stays_in_its_entries(update):
  # A bad entry counts as zero in the normalisers and in the row/column statistics: the other
  # entries of its tensor get the updates of the gradient with that entry zeroed, the bad entry
  # a nan update, and only its own momenta become non-finite.
  k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
  params = {"w": jax.random.normal(k1, (4, 3)), "v": jax.random.normal(k2, (5,))}
  grads = {"w": jax.random.normal(k3, (4, 3)), "v": jnp.linspace(-1.0, 1.0, 5)}
  bad_at = np.zeros((4, 3), bool)
  bad_at[1, 2] = bad_at[0, 0] = True
  bad = dict(grads, w=grads["w"].at[1, 2].set(jnp.nan).at[0, 0].set(jnp.inf))
  zeroed = dict(grads, w=jnp.where(bad_at, 0.0, grads["w"]))
  state = LOPT.scale_by(MP).init(params)
  u_bad, s_bad = update(MP, bad, state, params)
  u_zero, s_zero = update(MP, zeroed, state, params)
  u = np.asarray(u_bad["w"])
  assert np.all(np.isnan(u[bad_at])) and np.all(np.isfinite(u[~bad_at]))
  np.testing.assert_allclose(u[~bad_at], np.asarray(u_zero["w"])[~bad_at], rtol=1e-6)
  np.testing.assert_array_equal(u_bad["v"], u_zero["v"])
  for j in range(2):  # Adafactor's statistics do not see the bad entries
    np.testing.assert_array_equal(s_bad.row[j]["w"], s_zero.row[j]["w"])
    np.testing.assert_array_equal(s_bad.col[j]["w"], s_zero.col[j]["w"])
  for k in range(3):
    mu = np.asarray(s_bad.mu[k]["w"])
    assert not np.any(np.isfinite(mu[bad_at])) and np.all(np.isfinite(mu[~bad_at]))
  ref = _manual_step(MP, LOPT, bad["w"], params["w"])
  np.testing.assert_allclose(u[~bad_at], ref[~bad_at], rtol=2e-4, atol=1e-9)
  # The network reads zeros at the bad entries, so its weights' meta-gradient stays finite
  # (a decay logit's does not: its momentum at the bad entry is not finite).
  meta_grad = jax.grad(lambda mp: jnp.sum(jnp.where(
      bad_at, 0.0, LOPT.scale_by(mp).update(bad, state, params)[0]["w"])))(MP)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(meta_grad["mlp"]))
