"""Grouped estimation over a mixture's members (meta_train/estimators/grouped.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
import tasks
from meta_train import config as config_lib
from meta_train import errors
from meta_train.estimators import grouped
from meta_train.estimators import registry
from meta_train.runtime import checkpoint as ckpt_lib
from meta_train.runtime import sharding
from meta_train.trainer import MetaTrainer

UNROLL = {"truncation_length": 3, "min_horizon": 6, "max_horizon": 6}


def _family(weights=(3.0, 1.0)):
  return tasks.mixture_of([tasks.QuadraticFamily(dim=2), tasks.QuadraticFamily(dim=3)],
                          weights=weights)


def _lopt():
  return learned_opt.SGDMomentum()


def test_estimate_is_the_weighted_sum_of_each_members_own_estimate():
  lopt, family = _lopt(), _family()
  est = grouped.grouped_estimator("pes", lopt, family, member_pairs=(2, 1), sigma=0.01,
                                  **UNROLL)
  theta = lopt.init(jax.random.key(0))
  key = jax.random.key(1)
  state = jax.jit(est.init)(key, theta)
  grad, new_state, metrics = jax.jit(est.estimate)(theta, state, jax.random.key(2))

  # Each group is a plain PES over one member family, fed fold_in(key, i).
  own = []
  for i, (member, pairs) in enumerate(zip(family.families, (2, 1))):
    e = registry.make_estimator("pes", lopt, member, num_pairs=pairs, sigma=0.01, **UNROLL)
    s = jax.jit(e.init)(jax.random.fold_in(key, i), theta)
    own.append(jax.jit(e.estimate)(theta, s, jax.random.fold_in(jax.random.key(2), i)))
  expected = jax.tree.map(lambda a, b: 0.75 * a + 0.25 * b, own[0][0], own[1][0])
  chex.assert_trees_all_close(grad, expected, rtol=1e-6, atol=1e-9)
  chex.assert_trees_all_equal(new_state, (own[0][1], own[1][1]))

  m0, m1 = own[0][2], own[1][2]
  np.testing.assert_allclose(metrics["meta_loss"], 0.75 * m0["meta_loss"] + 0.25 * m1["meta_loss"],
                             rtol=1e-6)
  np.testing.assert_allclose(metrics["grad_variance"],
                             0.75**2 * m0["grad_variance"] + 0.25**2 * m1["grad_variance"],
                             rtol=1e-5)
  assert int(metrics["inner_steps"]) == int(m0["inner_steps"]) + int(m1["inner_steps"])
  # Both members are named "quadratic": the per-group keys carry their index.
  assert est.group_names == ("quadratic0", "quadratic1")
  np.testing.assert_allclose(metrics["meta_loss/quadratic1"], m1["meta_loss"])
  np.testing.assert_allclose(metrics["grad_norm"],
                             np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(grad))),
                             rtol=1e-5)


def test_group_clip_clips_each_groups_estimate_before_the_sum():
  lopt, family = _lopt(), _family()
  kw = dict(member_pairs=(2, 1), sigma=0.01, **UNROLL)
  theta = lopt.init(jax.random.key(0))
  plain = grouped.grouped_estimator("pes", lopt, family, **kw)
  state = jax.jit(plain.init)(jax.random.key(1), theta)
  _, _, m = jax.jit(plain.estimate)(theta, state, jax.random.key(2))
  n0, n1 = float(m["grad_norm/quadratic0"]), float(m["grad_norm/quadratic1"])
  # A clip between the two groups' norms clips the larger one only.
  clip = 0.5 * (n0 + n1)
  clipped = grouped.grouped_estimator("pes", lopt, family, group_clip=clip, **kw)
  grad, _, metrics = jax.jit(clipped.estimate)(theta, state, jax.random.key(2))
  own = []
  for i, (member, pairs) in enumerate(zip(family.families, (2, 1))):
    e = registry.make_estimator("pes", lopt, member, num_pairs=pairs, sigma=0.01, **UNROLL)
    s = jax.jit(e.init)(jax.random.fold_in(jax.random.key(1), i), theta)
    g = jax.jit(e.estimate)(theta, s, jax.random.fold_in(jax.random.key(2), i))[0]
    n = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(g)))
    np.testing.assert_allclose(n, (n0, n1)[i], rtol=1e-5)  # the logged per-group norm
    own.append(jax.tree.map(lambda x, n=n: x * min(1.0, clip / n), g))
  expected = jax.tree.map(lambda a, b: 0.75 * a + 0.25 * b, *own)
  chex.assert_trees_all_close(grad, expected, rtol=1e-5, atol=1e-9)
  assert float(metrics["grad_norm/quadratic0"]) == n0  # norms are logged before the clip
  with pytest.raises(errors.FieldError, match="group_clip"):
    grouped.grouped_estimator("pes", lopt, family, group_clip=-1.0, **kw)


def test_member_overrides_set_one_groups_own_estimator_settings():
  lopt, family = _lopt(), _family()
  kw = dict(member_pairs=(2, 1), sigma=0.01, **UNROLL)
  est = grouped.grouped_estimator("pes", lopt, family,
                                  member_overrides={"quadratic1": {"log_meta_loss": True,
                                                                   "sigma": 0.02}}, **kw)
  assert [g.unroll.log_meta_loss for g in est.groups] == [False, True]
  assert [g.sigma for g in est.groups] == [0.01, 0.02]
  theta = lopt.init(jax.random.key(0))
  state = jax.jit(est.init)(jax.random.key(1), theta)
  grad, _, metrics = jax.jit(est.estimate)(theta, state, jax.random.key(2))
  own = []
  for i, (member, extra) in enumerate(zip(family.families, ({}, {"log_meta_loss": True,
                                                                 "sigma": 0.02}))):
    e = registry.make_estimator("pes", lopt, member, num_pairs=(2, 1)[i],
                                **{**dict(sigma=0.01, **UNROLL), **extra})
    s = jax.jit(e.init)(jax.random.fold_in(jax.random.key(1), i), theta)
    own.append(jax.jit(e.estimate)(theta, s, jax.random.fold_in(jax.random.key(2), i)))
  chex.assert_trees_all_close(grad, jax.tree.map(lambda a, b: 0.75 * a + 0.25 * b,
                                                 own[0][0], own[1][0]), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(metrics["meta_loss/quadratic1"], own[1][2]["meta_loss"])
  assert float(metrics["meta_loss/quadratic1"]) < 0  # the log of normalised losses below 1
  assert float(metrics["meta_loss/quadratic0"]) > 0  # the other group's plain mean


@pytest.mark.parametrize("overrides, message", [
    ({"quadratic": {"sigma": 0.1}}, r"names 'quadratic', which is not a member.*quadratic0"),
    ({"quadratic0": {"num_pairs": 3}}, r"sets num_pairs for 'quadratic0'.*member_pairs"),
    ({"quadratic0": {"bogus": 3}}, r"sets 'bogus' for 'quadratic0', which estimator 'pes'"),
    ({"quadratic0": {}}, r"'quadratic0' must map to a non-empty dict"),
    ({"quadratic1": {"rise_penalty": -1.0}}, r"quadratic1\.rise_penalty: must be a finite"),
])
def test_member_overrides_are_checked_by_name(overrides, message):
  with pytest.raises(errors.FieldError, match=r"^GroupedEstimator\.member_overrides: " + message):
    grouped.grouped_estimator("pes", _lopt(), _family(), member_overrides=overrides, **UNROLL)


def test_weights_are_normalised_and_checked():
  lopt = _lopt()
  est = grouped.grouped_estimator("pes", lopt, _family((1.0, 1.0)), num_pairs=1, **UNROLL)
  assert est.weights == (0.5, 0.5)
  g = est.groups
  with pytest.raises(errors.FieldError, match="weights"):
    grouped.GroupedEstimator(g, (1.0, -1.0), est.family)
  with pytest.raises(errors.FieldError, match="weights"):
    grouped.GroupedEstimator(g, (1.0,), est.family)


def test_grouping_needs_a_mixture_and_one_count_per_member():
  lopt = _lopt()
  with pytest.raises(errors.FieldError, match="mixture"):
    grouped.grouped_estimator("pes", lopt, tasks.QuadraticFamily(dim=2), **UNROLL)
  with pytest.raises(errors.FieldError, match=r"must be 2 positive ints"):
    grouped.grouped_estimator("pes", lopt, _family(), member_pairs=(2,), **UNROLL)
  with pytest.raises(errors.FieldError, match=r"must be 2 positive ints"):
    grouped.grouped_estimator("pes", lopt, _family(), member_pairs=(2, 0), **UNROLL)
  # tbptt's count is num_particles.
  est = grouped.grouped_estimator("tbptt", lopt, _family(), member_pairs=(3, 2), **UNROLL)
  assert [g.num_particles for g in est.groups] == [3, 2]


def test_sharding_counts_are_the_union_and_the_unit_their_gcd():
  est = grouped.grouped_estimator("pes", _lopt(), _family(), member_pairs=(4, 6), **UNROLL)
  assert sharding.particle_counts(est) == (4, 6, 8, 12)
  assert sharding.sharding_unit(est) == 2


SMOKE_GROUPED = ["optimizer.name=sgd_momentum", "estimator.truncation_length=2",
                 "estimator.min_horizon=4", "estimator.max_horizon=4", "task.family=mixture", 'task.kwargs={"members": ["quadratic", "quadratic"], '
                 '"weights": [3, 1]}', "estimator.group_by_member=true"]


def test_config_builds_grouped_estimators_and_names_bad_fields():
  cfg = config_lib.resolve("smoke", SMOKE_GROUPED + ["estimator.member_pairs=[2, 4]"])
  est = config_lib.build_estimator(cfg, config_lib.build_optimizer(cfg),
                                   config_lib.build_family(cfg))
  assert isinstance(est, grouped.GroupedEstimator)
  assert [g.num_pairs for g in est.groups] == [2, 4] and est.weights == (0.75, 0.25)
  with pytest.raises(config_lib.ConfigError, match=r"^task\.family: .*mixture"):
    config_lib.resolve("smoke", ["estimator.group_by_member=true"])
  with pytest.raises(config_lib.ConfigError, match=r"^estimator\.member_pairs: .*group_by_member"):
    config_lib.resolve("smoke", ["estimator.member_pairs=[2, 2]"])
  clipped = config_lib.build_estimator(
      config_lib.resolve("smoke", SMOKE_GROUPED + ["estimator.group_clip=0.5"]),
      config_lib.build_optimizer(cfg), config_lib.build_family(cfg))
  assert clipped.group_clip == 0.5
  with pytest.raises(config_lib.ConfigError, match=r"^estimator\.group_clip: .*group_by_member"):
    config_lib.resolve("smoke", ["estimator.group_clip=1.0"])
  with pytest.raises(config_lib.ConfigError, match=r"^estimator\.group_clip: must be a finite"):
    config_lib.resolve("smoke", SMOKE_GROUPED + ["estimator.group_clip=-1"])
  # member_overrides: JSON values typed as their estimator.<field> (3 -> 3.0), errors by path.
  own = config_lib.build_estimator(
      config_lib.resolve("smoke", SMOKE_GROUPED + [
          'estimator.member_overrides={"quadratic1": {"rise_penalty": 3}}']),
      config_lib.build_optimizer(cfg), config_lib.build_family(cfg))
  assert [g.unroll.rise_penalty for g in own.groups] == [0.0, 3.0]
  assert isinstance(own.groups[1].unroll.rise_penalty, float)
  with pytest.raises(config_lib.ConfigError,
                     match=r"^estimator\.member_overrides: .*group_by_member"):
    config_lib.resolve("smoke", ['estimator.member_overrides={"quadratic": {"sigma": 0.1}}'])
  with pytest.raises(config_lib.ConfigError,
                     match=r"^estimator\.member_overrides\.quadratic1\.sigma: expected float"):
    config_lib.resolve("smoke", SMOKE_GROUPED + [
        'estimator.member_overrides={"quadratic1": {"sigma": "x"}}'])
  with pytest.raises(config_lib.ConfigError, match=r"^estimator\.member_overrides: names 'q'"):
    config_lib.resolve("smoke", SMOKE_GROUPED + ['estimator.member_overrides={"q": {"sigma": 1}}'])
  with pytest.raises(config_lib.ConfigError, match=r"^estimator\.member_pairs: must be 2"):
    config_lib.resolve("smoke", SMOKE_GROUPED + ["estimator.member_pairs=[2]"])
  with pytest.raises(config_lib.ConfigError, match=r"^estimator\.member_pairs: a group's 3 pairs"):
    config_lib.check_devices(
        config_lib.resolve("smoke", SMOKE_GROUPED + ["estimator.member_pairs=[2, 3]"]), 2)


def test_grouped_trainer_state_checkpoints_and_restores(tmp_path):
  cfg = config_lib.resolve("smoke", SMOKE_GROUPED)
  lopt = config_lib.build_optimizer(cfg)
  trainer = MetaTrainer(config_lib.build_estimator(cfg, lopt, config_lib.build_family(cfg)))
  state = trainer.init(jax.random.key(0))
  state, metrics = trainer.step(state)
  assert np.isfinite(float(metrics["meta_loss"]))
  assert {"meta_loss/quadratic0", "meta_loss/quadratic1"} <= set(metrics)
  ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt", max_to_keep=1)
  ckpt.save(1, state)
  ckpt.wait()
  step, restored = ckpt.restore_latest(jax.tree.map(jnp.zeros_like, state))
  ckpt.close()
  assert step == 1
  a, _ = trainer.step(state)
  b, _ = trainer.step(restored)
  chex.assert_trees_all_equal(a, b)
