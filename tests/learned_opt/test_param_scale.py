"""The parameter-scale step (:mod:`learned_opt.param_scale`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt import inits
from learned_opt import testing
from learned_opt.param_scale import ParamScale


def _apply(lopt, theta, updates, params):
  tx = lopt.scale_by(theta)
  return tx.update(updates, tx.init(params), params)[0]


def test_each_tensor_is_scaled_by_its_rms_with_a_floor():
  lopt = ParamScale(reference_rms=0.5, floor=0.01)
  theta = lopt.init(jax.random.key(0))
  assert float(theta["log_scale"]) == pytest.approx(math.log(2.0))
  params = {"w": jnp.array([[3.0, -4.0], [0.0, 0.0]]), "b": jnp.zeros(3),
            "n": jnp.array([2.0, jnp.nan]), "i": jnp.arange(2)}
  updates = {"w": jnp.ones((2, 2)), "b": jnp.array([1.0, jnp.nan, -1.0]),
             "n": jnp.array([1.0, 1.0]), "i": jnp.arange(2)}
  out = _apply(lopt, theta, updates, params)
  # rms(w) = sqrt((9 + 16) / 4) = 2.5; times e^β = 1 / 0.5.
  np.testing.assert_allclose(out["w"], np.full((2, 2), 2.5 * 2.0), rtol=1e-6)
  # A zero bias moves at the floor; its nan update stays in its entry.
  np.testing.assert_allclose(out["b"], [0.02, np.nan, -0.02], rtol=1e-6)
  # A nan parameter entry counts as zero: rms = sqrt(4 / 2).
  np.testing.assert_allclose(out["n"], np.full(2, math.sqrt(2.0) * 2.0), rtol=1e-6)
  np.testing.assert_array_equal(out["i"], [0, 1])
  half = _apply(lopt, theta, {"w": jnp.ones((2, 2), jnp.bfloat16)},
                {"w": params["w"].astype(jnp.bfloat16)})
  assert half["w"].dtype == jnp.bfloat16


def test_needs_params_and_rejects_bad_config():
  tx = ParamScale().scale_by(ParamScale().init(jax.random.key(0)))
  with pytest.raises(ValueError, match="param_scale"):
    tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}), None)
  for field in ("reference_rms", "floor"):
    with pytest.raises(ValueError, match=f"{field} must be a finite number > 0"):
      ParamScale(**{field: 0.0})


def test_rule_then_param_scale_is_a_conforming_chain():
  lopt = learned_opt.chain(learned_opt.MLPOptimizer(hidden_sizes=(4,)), ParamScale())
  theta = inits.adam_like(lopt, jax.random.key(1), learning_rate=1e-2)
  testing.check_learned_optimizer(lopt, theta, checks=(
      "shapes_and_dtypes", "non_finite_gradients", "save_load_round_trip"))
  # The step of a tensor of RMS 0.1 is the rule's; of RMS 1, ten times it.
  g = {"a": jnp.linspace(-1.0, 1.0, 6), "b": jnp.linspace(-1.0, 1.0, 6)}
  p = {"a": jnp.full(6, 0.1), "b": jnp.full(6, 1.0)}
  tx = lopt.transform(theta)
  step = tx.update(g, tx.init(p), p)[0]
  rule = learned_opt.MLPOptimizer(hidden_sizes=(4,)).transform(theta["mlp"])
  plain = rule.update(g, rule.init(p), p)[0]
  np.testing.assert_allclose(step["a"], plain["a"], rtol=1e-5)
  np.testing.assert_allclose(step["b"], 10.0 * np.asarray(plain["b"]), rtol=1e-5)


def test_at_init_holds_the_scale_of_the_first_parameters():
  lopt = ParamScale(reference_rms=0.5, floor=0.01, at_init=True)
  theta = lopt.init(jax.random.key(0))
  tx = lopt.scale_by(theta)
  first = {"w": jnp.array([[3.0, -4.0], [0.0, 0.0]]), "b": jnp.zeros(3), "i": jnp.arange(2),
           "none": None}
  state = tx.init(first)
  np.testing.assert_allclose(state.scales["w"], 2.5, rtol=1e-6)
  assert state.scales["w"].dtype == jnp.float32 and state.scales["none"] is None
  updates = {"w": jnp.ones((2, 2)), "b": jnp.array([1.0, jnp.nan, -1.0]), "i": jnp.arange(2),
             "none": None}
  # Grown parameters, or none at all, leave the step at the first parameters' scale: 2.5 / 0.5.
  for params in ({"w": 10.0 * first["w"], "b": jnp.ones(3), "i": jnp.arange(2), "none": None},
                 None):
    out, new_state = tx.update(updates, state, params)
    np.testing.assert_allclose(out["w"], np.full((2, 2), 5.0), rtol=1e-6)
    np.testing.assert_allclose(out["b"], [0.02, np.nan, -0.02], rtol=1e-6)
    np.testing.assert_array_equal(out["i"], [0, 1])
    assert out["none"] is None and new_state is state
  # The per-step reading, for contrast, follows the parameters: rms(10 w) = 25.
  per_step = ParamScale(reference_rms=0.5, floor=0.01).scale_by(theta)
  grown = per_step.update({"w": jnp.ones((2, 2))}, per_step.init({"w": first["w"]}),
                          {"w": 10.0 * first["w"]})[0]
  np.testing.assert_allclose(grown["w"], np.full((2, 2), 50.0), rtol=1e-6)
  with pytest.raises(ValueError, match="param_scale: the updates tree does not match the state"):
    tx.update({"w": jnp.ones((2, 2))}, state)
  with pytest.raises(ValueError, match="at_init must be a bool"):
    ParamScale(at_init=1)


def test_at_init_chain_saves_loads_and_keeps_its_option():
  lopt = learned_opt.chain(learned_opt.MLPOptimizer(hidden_sizes=(4,)),
                           ParamScale(floor=0.3, reference_rms=0.3, at_init=True))
  theta = inits.adam_like(lopt, jax.random.key(1), learning_rate=1e-2)
  testing.check_learned_optimizer(lopt, theta, checks=(
      "shapes_and_dtypes", "non_finite_gradients", "save_load_round_trip"))
  assert lopt.parts[1].config()["at_init"] is True
  assert type(lopt).from_config(lopt.config()).parts[1].at_init is True
  # A file written before the option reads as the per-step scale.
  config = ParamScale().config()
  del config["at_init"]
  assert ParamScale.from_config(config).at_init is False


def test_kernels_false_leaves_conv_kernels_at_the_rules_step():
  theta = {"log_scale": jnp.asarray(math.log(2.0), jnp.float32)}
  params = {"conv": jnp.full((3, 3, 2, 4), 3.0), "dense": jnp.full((2, 4), 3.0),
            "bias": jnp.full(4, 3.0)}
  updates = jax.tree.map(jnp.ones_like, params)
  for at_init in (False, True):
    spared = _apply(ParamScale(at_init=at_init, kernels=False), theta, updates, params)
    everything = _apply(ParamScale(at_init=at_init), theta, updates, params)
    # rms = 3 and e^β = 2: a factor of 6, except on the 4-axis kernel when spared.
    np.testing.assert_allclose(spared["conv"], np.ones((3, 3, 2, 4)))
    np.testing.assert_allclose(everything["conv"], np.full((3, 3, 2, 4), 6.0), rtol=1e-6)
    for name in ("dense", "bias"):
      np.testing.assert_allclose(spared[name], np.full(params[name].shape, 6.0), rtol=1e-6)
  lopt = ParamScale(kernels=False)
  assert type(lopt).from_config(lopt.config()).kernels is False
  config = ParamScale().config()
  del config["kernels"]  # a file written before the option scales every tensor
  assert ParamScale.from_config(config).kernels is True
  with pytest.raises(ValueError, match="kernels must be a bool"):
    ParamScale(kernels="no")
