"""Clipping of the gradient's global norm in front of a rule (:mod:`learned_opt.clip`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt.clip import ClipGradients, finite_global_norm


def _apply(lopt, theta, updates, params=None):
  tx = lopt.scale_by(theta)
  return tx.update(updates, tx.init(params), params)[0]


def test_a_tree_above_the_threshold_is_scaled_to_it():
  lopt = ClipGradients(max_norm=1.0)
  theta = lopt.init(jax.random.key(0))
  # Global norm sqrt(3² + 4²) = 5 -> every entry times 1/5.
  grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]]), "i": jnp.arange(2)}
  out = _apply(lopt, theta, grads)
  np.testing.assert_allclose(out["a"], [0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(out["b"], [[0.8]], rtol=1e-6)
  np.testing.assert_array_equal(out["i"], [0, 1])
  assert float(finite_global_norm(out)) == pytest.approx(1.0, rel=1e-6)


def test_a_tree_below_the_threshold_passes_bit_for_bit():
  grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]], jnp.bfloat16)}
  out = _apply(ClipGradients(max_norm=5.5), ClipGradients().init(None), grads)
  for k in grads:
    assert out[k].dtype == grads[k].dtype
    np.testing.assert_array_equal(np.asarray(out[k], np.float32),
                                  np.asarray(grads[k], np.float32))


def test_the_learned_threshold_multiplies_max_norm():
  lopt = ClipGradients(max_norm=0.5)
  theta = {"log_max_norm": jnp.asarray(math.log(4.0), jnp.float32)}
  assert float(lopt.threshold(theta)) == pytest.approx(2.0, rel=1e-6)
  out = _apply(lopt, theta, {"a": jnp.array([3.0, 4.0])})  # norm 5 -> 2
  np.testing.assert_allclose(out["a"], [1.2, 1.6], rtol=1e-6)


def test_non_finite_entries_stay_and_do_not_count():
  lopt = ClipGradients(max_norm=1.0)
  grads = {"a": jnp.array([3.0, jnp.nan]), "b": jnp.array([4.0, jnp.inf])}
  out = _apply(lopt, lopt.init(None), grads)
  # The finite entries' norm is 5: they are scaled as if the others were absent.
  np.testing.assert_allclose(out["a"], [0.6, np.nan], rtol=1e-6)
  np.testing.assert_allclose(out["b"], [0.8, np.inf], rtol=1e-6)


def test_in_front_of_a_rule_the_rule_sees_the_clipped_gradient():
  rule = learned_opt.MLPOptimizer(hidden_sizes=(8,))
  lopt = learned_opt.chain(ClipGradients(max_norm=0.1), rule)
  theta = lopt.init(jax.random.key(1))
  params = {"w": jnp.array([[1.0, -2.0], [0.5, 0.0]]), "b": jnp.array([0.3, 0.1])}
  grads = {"w": jnp.array([[3.0, -1.0], [2.0, 0.5]]), "b": jnp.array([-4.0, 1.0])}
  norm = math.sqrt(9 + 1 + 4 + 0.25 + 16 + 1)
  clipped = jax.tree.map(lambda g: g * (0.1 / norm), grads)
  tx, ref = lopt.scale_by(theta), rule.scale_by(theta["mlp"])
  got, _ = tx.update(grads, tx.init(params), params)
  want, _ = ref.update(clipped, ref.init(params), params)
  for k in grads:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan, True, "1"])
def test_bad_max_norm_is_a_clear_error(bad):
  with pytest.raises(ValueError, match="max_norm must be a finite number > 0"):
    ClipGradients(max_norm=bad)


def test_a_chain_with_the_clip_round_trips(tmp_path):
  lopt = learned_opt.chain(ClipGradients(max_norm=2.0), learned_opt.MLPOptimizer((4,)))
  theta = lopt.init(jax.random.key(2))
  theta["clip"] = {"log_max_norm": jnp.asarray(0.25, jnp.float32)}
  path = tmp_path / "clip.safetensors"
  learned_opt.save(path, lopt, theta)
  lopt2, theta2 = learned_opt.load(path)
  assert lopt2 == lopt and lopt2.parts[0].max_norm == 2.0
  assert float(theta2["clip"]["log_max_norm"]) == 0.25
