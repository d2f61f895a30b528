"""learned_opt.testing: the exported checker passes working optimizers and names the check a
broken optimizer fails. (Every registered optimizer meets each check one by one in
test_conformance.py; here the checker itself runs on a hand-designed and a learned one.)"""

import dataclasses

import jax
import jax.numpy as jnp
import optax
import pytest

import learned_opt
from learned_opt import testing


@pytest.mark.parametrize("name", ["adam", "mlp"])
def test_working_optimizers_pass_every_check(name):
  lopt = learned_opt.registry()[name]()
  assert testing.check_learned_optimizer(lopt) == tuple(testing.CHECKS)


@dataclasses.dataclass(frozen=True)
class _CastsToFloat32(learned_opt.Adam):
  """A broken optimizer: its updates come back in float32 whatever the params' dtype."""

  def scale_by(self, meta_params, *, num_steps=None):
    inner = super().scale_by(meta_params, num_steps=num_steps)

    def update(updates, state, params=None, **extra):
      u, state = inner.update(updates, state, params, **extra)
      return jax.tree.map(lambda x: x.astype(jnp.float32), u), state

    return optax.GradientTransformationExtraArgs(inner.init, update)


@dataclasses.dataclass(frozen=True)
class _ReadsUnknownKeywords(learned_opt.Adam):
  """A broken optimizer: an unknown keyword changes its update."""

  def scale_by(self, meta_params, *, num_steps=None):
    inner = super().scale_by(meta_params, num_steps=num_steps)

    def update(updates, state, params=None, **extra):
      u, state = inner.update(updates, state, params)
      scale = 2.0 if "unexpected_extra_arg" in extra else 1.0
      return jax.tree.map(lambda x: scale * x, u), state

    return optax.GradientTransformationExtraArgs(inner.init, update)


def test_a_broken_optimizer_fails_the_check_it_breaks():
  with pytest.raises(AssertionError, match="shapes_and_dtypes failed.*bfloat16"):
    testing.check_learned_optimizer(_CastsToFloat32(), checks=("shapes_and_dtypes",))
  with pytest.raises(AssertionError, match="extra_arguments failed"):
    testing.check_learned_optimizer(_ReadsUnknownKeywords())
  # The same optimizer passes the checks it does not break.
  assert testing.check_learned_optimizer(_ReadsUnknownKeywords(),
                                         checks=("multisteps", "non_finite_gradients"))
  with pytest.raises(ValueError, match="unknown checks \\['nope'\\]"):
    testing.check_learned_optimizer(learned_opt.Adam(), checks=("nope",))
