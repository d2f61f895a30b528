"""Composite learned optimizers (:mod:`learned_opt.chain`)."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from learned_opt import testing
from learned_opt.mlp import MLPOptimizer
from learned_opt.schedule import LearnedSchedule

RULE = MLPOptimizer(hidden_sizes=(4,), time_scales=(1.0, 10.0))
SCHEDULE = LearnedSchedule(hidden_size=3, time_scales=(1.0, 10.0))
CHAIN = learned_opt.chain(RULE, SCHEDULE)


def test_meta_params_config_and_keys():
  theta = CHAIN.init(jax.random.key(5))
  assert CHAIN.part_names == ["mlp", "schedule"]
  testing.assert_bitwise_equal(theta["mlp"], RULE.init(jax.random.key(5)))
  testing.assert_bitwise_equal(theta["schedule"],
                               SCHEDULE.init(jax.random.fold_in(jax.random.key(5), 1)))
  config = json.loads(json.dumps(CHAIN.config()))
  assert config == {"parts": [{"name": "mlp", "config": RULE.config()},
                              {"name": "schedule", "config": SCHEDULE.config()}]}
  assert learned_opt.Chain.from_config(config) == CHAIN


def test_transform_is_optax_chain_of_the_parts():
  theta = CHAIN.init(jax.random.key(0))
  theta["schedule"]["b1"] = jnp.asarray([0.5])
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones((3,))}
  grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)
  want = optax.chain(RULE.scale_by(theta["mlp"], num_steps=9),
                     SCHEDULE.scale_by(theta["schedule"], num_steps=9))
  got = CHAIN.scale_by(theta, num_steps=9)
  u1, _ = want.update(grads, want.init(params), params, loss=2.0)
  u2, _ = got.update(grads, got.init(params), params, loss=2.0)
  testing.assert_bitwise_equal(u1, u2)
  rule = RULE.scale_by(theta["mlp"], num_steps=9)
  u_rule, _ = rule.update(grads, rule.init(params), params)
  for a, b in zip(jax.tree.leaves(u2), jax.tree.leaves(u_rule)):
    np.testing.assert_allclose(a, np.exp(0.5) * np.asarray(b), rtol=1e-6)


def test_low_precision_steps_are_rounded_once_at_the_end():
  """A bf16 model's step is the float32 chain's step rounded to bf16 once: no rounding after
  each part, and no schedule factor rounded to bf16 (the step learned_opt.torch takes)."""
  lopt = learned_opt.chain(
      learned_opt.ClipGradients(max_norm=0.5), MLPOptimizer(hidden_sizes=(4,)),
      learned_opt.Orthogonalize(), learned_opt.ParamScale(at_init=True),
      learned_opt.CosineDecay(final_fraction=0.1))
  theta = learned_opt.inits.adam_like(lopt, jax.random.key(2), learning_rate=1e-2)
  keys = jax.random.split(jax.random.key(3), 4)
  params = {"w": jax.random.normal(keys[0], (5, 3)), "b": 0.1 * jax.random.normal(keys[1], (3,)),
            "i": jnp.arange(2)}
  grads = {"w": jax.random.normal(keys[2], (5, 3)), "b": jax.random.normal(keys[3], (3,)),
           "i": jnp.arange(2)}
  def cast(tree, dtype):  # float leaves only
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
  as16 = functools.partial(cast, dtype=jnp.bfloat16)
  as32 = functools.partial(cast, dtype=jnp.float32)
  p16, g16 = as16(params), as16(grads)
  tx = lopt.transform(theta, num_steps=10)
  s16, s32 = tx.init(p16), tx.init(as32(p16))
  for t in range(3):
    u16, s16 = tx.update(g16, s16, p16, loss=1.0)
    u32, s32 = tx.update(as32(g16), s32, as32(p16), loss=1.0)
    assert u16["w"].dtype == jnp.bfloat16 and u16["i"].dtype == jnp.int32
    testing.assert_bitwise_equal(u16, as16(u32))


def test_horizon_aware_if_any_part_is():
  assert not CHAIN.horizon_aware
  assert learned_opt.chain(RULE, LearnedSchedule(horizon_aware=True)).horizon_aware
  assert learned_opt.chain(MLPOptimizer(horizon_aware=True), SCHEDULE).horizon_aware


def test_passes_the_conformance_checks():
  testing.check_learned_optimizer(CHAIN)


def test_save_load_round_trip_is_bit_exact(tmp_path):
  theta = jax.tree.map(lambda x: x + 0.125, CHAIN.init(jax.random.key(1)))
  path = tmp_path / "chain.safetensors"
  learned_opt.save(path, CHAIN, theta, provenance={"start": "lecun"})
  lopt, theta2, prov = learned_opt.read(path)
  assert lopt == CHAIN and prov == {"start": "lecun"}
  testing.assert_bitwise_equal(theta2, theta)


def test_errors_are_clear():
  with pytest.raises(ValueError, match="at least one part"):
    learned_opt.chain()
  with pytest.raises(ValueError, match=r"distinct names .* \['mlp', 'mlp'\]"):
    learned_opt.chain(RULE, MLPOptimizer())
  with pytest.raises(ValueError, match="cannot be chains themselves"):
    learned_opt.chain(CHAIN, LearnedSchedule())
  with pytest.raises(ValueError, match="must be learned optimizers"):
    learned_opt.chain(RULE, optax.adam(1e-3))
  with pytest.raises(ValueError, match=r"meta_params must be a dict with keys \['mlp', "):
    CHAIN.scale_by({"mlp": RULE.init(jax.random.key(0))})
  with pytest.raises(ValueError, match=r"unknown config keys \['extra'\]"):
    learned_opt.Chain.from_config({"parts": [], "extra": 1})
  with pytest.raises(ValueError, match="part 0 has unknown architecture 'velo'"):
    learned_opt.Chain.from_config({"parts": [{"name": "velo", "config": {}}]})
  with pytest.raises(ValueError, match="part 0 must be"):
    learned_opt.Chain.from_config({"parts": [{"name": "mlp"}]})
  with pytest.raises(ValueError, match=r"mlp: unknown config keys \['bogus'\]"):
    learned_opt.Chain.from_config({"parts": [{"name": "mlp", "config": {"bogus": 1}}]})
