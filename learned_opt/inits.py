"""Starts: functions that return a learned optimizer's initial meta-parameters.

``lopt.init(key)`` is every architecture's own (random) start; the functions here are other
starts for the same architecture, kept out of its config: they choose where meta-training
begins, not what the optimizer computes, so a saved file records its start in its provenance
only. Each takes the optimizer and a key and returns meta-parameters that fit it::

  lopt = learned_opt.MLPOptimizer(hidden_sizes=(16, 16))
  theta = learned_opt.inits.adam_like(lopt, jax.random.key(0), learning_rate=5e-3, decay=3.0)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from learned_opt import base
from learned_opt.chain import Chain
from learned_opt import mlp as mlp_lib


def _num_units(decay: float) -> int:
  """Hidden units per layer the Adam-like start uses: the ratio's ReLU pair, and ``t/T``."""
  return 3 if decay > 0 else 2


def _adam_like_mlp(lopt: mlp_lib.MLPOptimizer, key: jax.Array, learning_rate: float,
                   decay: float) -> base.MetaParams:
  need = _num_units(decay)
  if min(lopt.hidden_sizes, default=0) < need:
    raise ValueError(f"adam_like needs at least one hidden layer, each of width >= {need}"
                     f"{' (decay > 0)' if need == 3 else ''}, got hidden_sizes="
                     f"{lopt.hidden_sizes!r}")
  theta = lopt.init(key)
  beta = min(lopt.momentum_decays, key=lambda b: abs(b - 0.9))
  ratio = lopt.feature_names().index(f"mom_{beta}*rsqrt_rms_{lopt.rms_decays[0]}")
  n_layers = len(lopt.hidden_sizes) + 1
  w0 = theta["w0"].at[:, :2].set(0.0)
  theta["w0"] = w0.at[ratio, 0].set(1.0).at[ratio, 1].set(-1.0)
  theta["b0"] = theta["b0"].at[:2].set(0.0)
  for i in range(1, n_layers - 1):  # the pair passes through the middle layers unchanged
    w = theta[f"w{i}"].at[:, :2].set(0.0)
    theta[f"w{i}"] = w.at[0, 0].set(1.0).at[1, 1].set(1.0)
    theta[f"b{i}"] = theta[f"b{i}"].at[:2].set(0.0)
  gain = learning_rate / lopt.step_mult
  w_out = jnp.zeros_like(theta[f"w{n_layers - 1}"])
  theta[f"w{n_layers - 1}"] = w_out.at[0, 0].set(-gain).at[1, 0].set(gain)
  theta[f"b{n_layers - 1}"] = jnp.zeros_like(theta[f"b{n_layers - 1}"])
  if decay > 0:  # unit 2 carries t/T (the first horizon feature) to the magnitude
    frac = lopt.num_features + len(lopt.time_scales)
    theta["w0"] = theta["w0"].at[:, 2].set(0.0).at[frac, 2].set(1.0)
    theta["b0"] = theta["b0"].at[2].set(0.0)
    for i in range(1, n_layers - 1):
      theta[f"w{i}"] = theta[f"w{i}"].at[:, 2].set(0.0).at[2, 2].set(1.0)
      theta[f"b{i}"] = theta[f"b{i}"].at[2].set(0.0)
    last = f"w{n_layers - 1}"
    theta[last] = theta[last].at[2, 1].set(-decay / lopt.exp_mult)
  if "wt" in theta:  # the Adam-like units read no per-tensor feature
    theta["wt"] = theta["wt"].at[:, :need].set(0.0)
  return theta


def adam_like(lopt: base.LearnedOptimizer, key: jax.Array, *, learning_rate: float = 5e-3,
              decay: float = 0.0) -> base.MetaParams:
  """An :class:`~learned_opt.MLPOptimizer` start that computes a normalised Adam step.

  ``lopt.init(key)``'s random network, except that two units per hidden layer carry the
  normalised Adam ratio ``r̃ = m_β v^{-1/2} / \\sqrt{mean_tensor((m_β v^{-1/2})^2) + ε}``
  (``β`` the momentum decay nearest 0.9, ``v`` the first second moment) as the ReLU pair
  ``(relu(r̃), relu(-r̃))``, the direction output is ``d = -(λ / b) (relu(r̃) - relu(-r̃))``
  and the magnitude output is zero, so the step is

  .. math::
    u = -λ\\, e^{-k t / T}\\, r̃

  Adam's direction with a per-tensor RMS of ``λ`` (the first step is exactly ``-λ sign(g)``,
  as Adam's). With ``k > 0`` a third unit carries the fraction of the run done, ``t/T``, to
  the magnitude output with weight ``-k/a``; without ``num_steps`` the horizon features are
  zero and the step does not decay. The other units' output weights (and the per-tensor
  features' weights into these units) are zero, so meta-training starts from a descent method
  (NN-Adam of ``learned_optimization``; Celo-Adam, arXiv 2501.12670, Sec. 3) and can grow away
  from it.

  Args:
    lopt: an :class:`~learned_opt.MLPOptimizer`, or a :class:`~learned_opt.Chain` whose
      :class:`~learned_opt.MLPOptimizer` parts get this start (the others their ``init``).
    key: the key ``lopt.init`` would get.
    learning_rate: ``λ``, the RMS over each tensor of the initial step (> 0).
    decay: ``k`` of the initial decay ``exp(-k t/T)`` over a run of ``T = num_steps`` (>= 0).

  Returns:
    Meta-parameters for ``lopt``.

  Raises:
    ValueError: for a bad ``learning_rate`` or ``decay``, hidden layers narrower than the
      units the start needs, or an optimizer without an MLP rule.
  """
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
  if not decay >= 0:
    raise ValueError(f"decay must be >= 0, got {decay!r}")
  if isinstance(lopt, mlp_lib.MLPOptimizer):
    return _adam_like_mlp(lopt, key, learning_rate, decay)
  if isinstance(lopt, Chain) and any(
      isinstance(p, mlp_lib.MLPOptimizer) for p in lopt.parts):
    theta = lopt.init(key)
    for name, part, k in zip(lopt.part_names, lopt.parts, lopt.part_keys(key)):
      if isinstance(part, mlp_lib.MLPOptimizer):
        theta[name] = _adam_like_mlp(part, k, learning_rate, decay)
    return theta
  raise ValueError(f"adam_like starts an MLPOptimizer (or a chain holding one), got "
                   f"{type(lopt).__name__}")

