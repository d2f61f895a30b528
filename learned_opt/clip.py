"""Clipping of the gradient's global norm, composed in front of a rule.

A learned rule meets the gradient through features it normalises by running averages; a loss
with heavy-tailed noise (a diffusion loss weighted by the signal-to-noise ratio, whose weight
grows as ``1/σ²`` at small noise levels) sends gradient spikes of hundreds of times the
typical norm, and one of them can throw a run into a state it never leaves. This piece bounds
what the rest of the chain sees, as gradient clipping does in front of Adam (Pascanu et al.,
arXiv 1211.5063)::

  lopt = learned_opt.chain(learned_opt.ClipGradients(), learned_opt.MLPOptimizer())
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from learned_opt import base
from learned_opt import features as feats_lib
from learned_opt import tree_utils


def finite_global_norm(tree) -> jax.Array:
  """The global L2 norm of a tree's floating entries, non-finite entries left out.

  Summed in the widest of the leaves' dtypes and float32 (float64 leaves keep their precision).
  """
  leaves = [x for x in jax.tree.leaves(tree) if tree_utils.is_float(x)]
  dtype = jnp.result_type(jnp.float32, *leaves)
  total = jnp.zeros([], dtype)
  for x in leaves:
    total = total + jnp.sum(jnp.square(feats_lib.finite_or_zero(x.astype(dtype))))
  return jnp.sqrt(total)


@base.register
@dataclasses.dataclass(frozen=True)
class ClipGradients(base.LearnedOptimizer):
  """Scales the incoming tree down to a global norm of at most ``c = e^β · max_norm``.

  .. math::
    u \\leftarrow \\min\\Big(1,\\ \\frac{c}{\\lVert u \\rVert_2}\\Big)\\, u,
    \\qquad c = e^{β}\\, c_0

  (Pascanu et al., *On the difficulty of training recurrent neural networks*, arXiv 1211.5063,
  Eq. 11; ``optax.clip_by_global_norm``). ``θ = {"log_max_norm": β}``, started at 0, so
  meta-training may move the threshold. The norm is taken over the finite floating entries: a
  non-finite entry stays non-finite in its place, and every other entry is scaled as if it
  were absent. Integer, boolean and ``None`` leaves pass; each leaf keeps its dtype. It has no
  state and reads neither ``params`` nor the loss.

  Attributes:
    max_norm: the threshold ``c₀`` at ``β = 0`` (a finite number > 0).

  References:
    Pascanu, Mikolov & Bengio, 2013, arXiv 1211.5063 (Sec. 3.2, Algorithm 1).
  """

  name = "clip"
  max_norm: float = 1.0

  def __post_init__(self):
    c = self.max_norm
    if not (isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
            and c > 0):
      raise ValueError(f"max_norm must be a finite number > 0, got {c!r}")

  def init(self, key: jax.Array) -> base.MetaParams:
    del key
    return {"log_max_norm": jnp.zeros([], jnp.float32)}

  def threshold(self, meta_params) -> jax.Array:
    """The threshold ``c = e^β c₀`` (in β's dtype, at least float32)."""
    base.check_meta_params(self.name, meta_params, {"log_max_norm": ()})
    beta = jnp.asarray(meta_params["log_max_norm"])
    return jnp.exp(beta.astype(jnp.result_type(jnp.float32, beta))) * self.max_norm

  def scale_by(self, meta_params, *, num_steps=None):
    """The clipped tree as an optax transformation (``num_steps`` is not read)."""
    del num_steps
    limit = self.threshold(meta_params)

    def update_fn(updates, state, params=None, **extra_args):
      del extra_args
      tree_utils.check_trees(self.name, updates, ("params", params))
      norm = finite_global_norm(updates)
      factor = jnp.where(norm > limit, limit / jnp.maximum(norm, 1e-30), 1.0)

      def one(u):
        if not tree_utils.is_float(u):
          return u
        return jnp.where(jnp.isfinite(u), u * factor.astype(u.dtype), u)

      return jax.tree.map(one, updates, is_leaf=lambda x: x is None), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)
