"""Hand-designed optimizers expressed as learned optimizers (meta-learnable hyper-parameters).

They share the :class:`~learned_opt.base.LearnedOptimizer` interface, so meta-training can tune
them and run them as baselines, and the estimator tests can compare meta-gradients against the
exact ``jax.grad`` of a quadratic's training loss with respect to the (log) learning rate.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from learned_opt import base
from learned_opt import tree_utils
from learned_opt.tree_utils import Leaf as _Leaf
from learned_opt.tree_utils import is_float as _is_float
from learned_opt.tree_utils import unzip as _unzip


class SGDMState(NamedTuple):
  """State of :class:`SGDMomentum`: one momentum buffer per parameter."""

  mu: optax.Updates


class AdamState(NamedTuple):
  """State of :class:`Adam`: step count and first/second moments per parameter."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


@base.register
@dataclasses.dataclass(frozen=True)
class SGDMomentum(base.LearnedOptimizer):
  """SGD with heavy-ball momentum and a meta-learnable log learning rate.

  .. math::
    m_t = \\beta m_{t-1} + g_t, \\qquad u_t = -\\exp(\\log\\eta)\\, m_t

  Meta-parameters: ``{"log_lr": scalar, "logit_momentum": scalar}``; the momentum
  ``β = sigmoid(logit_momentum)``. Integer and boolean leaves pass through unchanged (zero update).

  Attributes:
    initial_learning_rate: learning rate at :meth:`init`.
    initial_momentum: momentum β at :meth:`init` (0 gives plain SGD).
    learn_momentum: if False, β stays at ``initial_momentum`` (no gradient flows to it).
  """

  name = "sgd_momentum"
  initial_learning_rate: float = 1e-2
  initial_momentum: float = 0.9
  learn_momentum: bool = False

  def init(self, key: jax.Array) -> base.MetaParams:
    del key
    m = min(max(self.initial_momentum, 1e-6), 1 - 1e-6)
    return {
        "log_lr": jnp.asarray(jnp.log(self.initial_learning_rate), jnp.float32),
        "logit_momentum": jnp.asarray(jnp.log(m) - jnp.log1p(-m), jnp.float32),
    }

  def scale_by(self, meta_params, *, num_steps=None):
    del num_steps
    lr = jnp.exp(meta_params["log_lr"])
    if self.learn_momentum:
      beta = jax.nn.sigmoid(meta_params["logit_momentum"])
    else:
      beta = jnp.asarray(self.initial_momentum, jnp.float32)

    def init_fn(params):
      return SGDMState(mu=jax.tree.map(tree_utils.zeros_state, params))

    def update_fn(updates, state, params=None, **extra_args):
      del extra_args  # params are optional here: SGD does not read them
      tree_utils.check_trees(self.name, updates, ("optimizer state", state.mu),
                             ("params", params))

      def upd(g, m):
        if not _is_float(g):
          return _Leaf(g, m)
        m_new = (beta * m + g.astype(m.dtype)).astype(m.dtype)
        return _Leaf((-lr * m_new).astype(g.dtype), m_new)

      new_updates, new_mu = _unzip(jax.tree.map(upd, updates, state.mu), 2)
      return new_updates, SGDMState(mu=new_mu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@base.register
@dataclasses.dataclass(frozen=True)
class Adam(base.LearnedOptimizer):
  """Adam (Kingma & Ba 2014, arXiv 1412.6980, Algorithm 1) with a meta-learnable log learning rate.

  .. math::
    m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t,\\quad v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2,
    \\quad u_t = -\\exp(\\log\\eta)\\, \\hat m_t / (\\sqrt{\\hat v_t} + \\epsilon)

  Meta-parameters: ``{"log_lr": scalar}``. With ``log_lr = log(η)`` the updates equal
  ``optax.adam(η, b1, b2, eps, eps_root)``'s. The tiny default ``eps_root`` (inside the square
  root, as in optax) keeps meta-gradients finite where a gradient entry is exactly zero
  (d√v/dv is infinite at v = 0) without changing the updates. Integer and boolean leaves pass
  through unchanged.
  """

  name = "adam"
  initial_learning_rate: float = 1e-3
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  eps_root: float = 1e-30

  def init(self, key: jax.Array) -> base.MetaParams:
    del key
    return {"log_lr": jnp.asarray(jnp.log(self.initial_learning_rate), jnp.float32)}

  def scale_by(self, meta_params, *, num_steps=None):
    del num_steps
    lr = jnp.exp(meta_params["log_lr"])
    b1, b2, eps, eps_root = self.b1, self.b2, self.eps, self.eps_root

    def init_fn(params):
      zeros = jax.tree.map(tree_utils.zeros_state, params)
      return AdamState(count=jnp.zeros([], jnp.int32), mu=zeros,
                       nu=jax.tree.map(tree_utils.zeros_state, params))

    def update_fn(updates, state, params=None, **extra_args):
      del extra_args  # params are optional here: Adam does not read them
      tree_utils.check_trees(self.name, updates, ("optimizer state", state.mu),
                             ("params", params))
      count = optax.safe_increment(state.count)
      c1 = 1 - b1 ** count.astype(jnp.float32)
      c2 = 1 - b2 ** count.astype(jnp.float32)

      def upd(g, m, v):
        if not _is_float(g):
          return _Leaf(g, m, v)
        g32 = g.astype(m.dtype)
        m_new = (b1 * m + (1 - b1) * g32).astype(m.dtype)
        v_new = (b2 * v + (1 - b2) * g32 * g32).astype(v.dtype)
        step = (m_new / c1) / (jnp.sqrt(v_new / c2 + eps_root) + eps)
        return _Leaf((-lr * step).astype(g.dtype), m_new, v_new)

      new_updates, mu, nu = _unzip(jax.tree.map(upd, updates, state.mu, state.nu), 3)
      return new_updates, AdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
