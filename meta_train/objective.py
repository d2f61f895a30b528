"""The meta-objective: what each inner step's loss contributes to an unroll's meta-loss.

A step's raw loss ``f`` (train or valid, :class:`meta_train.unroll.UnrollConfig`'s ``meta_loss``)
is first normalised by its task and clipped,

.. math::
  \\hat\\ell_t = \\min\\big(n(f_t),\\ c\\big) \\quad (\\text{non-finite } f_t:\\ c,\\ \\text{counted}),

with ``c`` the task's ceiling or ``loss_clip``, then passed through a chain of *terms*. A term is
a pure function of the step's value, a small carry of its own and the step's
:class:`StepContext` (is this the first step of a run, how far through its run is it); the
terms compose in order, as optax's transforms do, and the unroll's meta-loss is the mean of the
chain's outputs over its steps:

* :func:`log_loss`: ``ℓ ← log(max(ℓ, 0) + ε)``, so a factor at the end of a run counts as much
  as the same factor at its start (Metz et al. 2020, arXiv 2009.11243, Sec. 3.2);
* :func:`rise_penalty`: ``ℓ_t ← ℓ_t + λ max(0, ℓ_t - min_{s<t} ℓ_s)`` over the same run's
  earlier steps in the unroll, a stability term (reports/experiments/LOG.md #128/#129);
* :func:`end_weight`: ``ℓ_t ← (p + 1) (t/T)^p ℓ_t``, the end of each run weighted up (VeLO
  meta-trains on the final loss; Metz et al. 2022, arXiv 2211.09760, App. C).

:func:`from_config` builds the chain a run configures with ``estimator.log_meta_loss``,
``estimator.rise_penalty`` and ``estimator.end_weight``, in that order. A new term is a new
function here, composed by :func:`chain`; the unroll does not change.

Example::

  term = chain(log_loss(), rise_penalty(1.0))
  carry = term.init()
  for loss, ctx in steps:
    value, carry = term.apply(loss, carry, ctx)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

#: ``ε`` of :func:`log_loss`: normalised losses below ~1e-8 count as 1e-8.
LOG_EPS = 1e-8


class StepContext(NamedTuple):
  """What a term may read about the step besides its loss (scalars, traced).

  Attributes:
    run_start: bool, the step is the first of a run that started inside this unroll (the
      chain's carry also starts afresh at each unroll's first step, from ``init``).
    fraction: float32, ``t / T``: the steps the run has done after this one over its horizon.
  """

  run_start: jax.Array
  fraction: jax.Array


class Term(NamedTuple):
  """One piece of the meta-objective.

  Attributes:
    init: ``() -> carry``, the carry at an unroll's first step (a pytree; ``()`` for none).
    apply: ``(value, carry, context) -> (value, carry)`` for one step, pure.
  """

  init: Callable[[], Any]
  apply: Callable[[jax.Array, Any, StepContext], tuple[jax.Array, Any]]


def chain(*terms: Term) -> Term:
  """The terms applied in order, each to the previous one's output; no term: the identity."""

  def init():
    return tuple(t.init() for t in terms)

  def apply(value, carry, context):
    out = []
    for term, own in zip(terms, carry):
      value, own = term.apply(value, own, context)
      out.append(own)
    return value, tuple(out)

  return Term(init, apply)


def safe_log(value: jax.Array) -> jax.Array:
  """``log(max(ℓ̂, 0) + ε)``: a noisy quadratic's train loss can be negative, and counts as 0."""
  return jnp.log(jnp.maximum(value, 0.0) + LOG_EPS)


def log_loss() -> Term:
  """``ℓ ← log(max(ℓ, 0) + ε)`` (:data:`LOG_EPS`).

  The plain mean over steps is dominated by a run's first steps, where the loss is large; in
  log space a factor of 4 at the end of a run counts as much as a factor of 4 at its start, so
  annealing to a lower final loss pays (the log-loss meta-objectives of Metz et al. 2020,
  arXiv 2009.11243, Sec. 3.2).
  """
  return Term(lambda: (), lambda value, carry, context: (safe_log(value), carry))


def rise_penalty(weight: float) -> Term:
  """``ℓ_t ← ℓ_t + λ max(0, ℓ_t - min_{s<t} ℓ_s)``, ``s`` the same run's earlier steps here.

  The mean over steps pays for a loss spike or a slow climb only by its height over the steps
  it lasts; this term makes every rise above the run's lowest loss so far cost ``1 + λ`` times
  as much, so the estimators see the perturbations that destabilise a run, the runs that at 10x
  the meta-training horizon diverge (reports/experiments/LOG.md #124, #128/#129). The minimum
  covers the unroll only (a truncation; the carry holds it and needs no particle state): it
  starts afresh at the unroll's first step and at a run's first step. Antithetic pairs share
  their batches, so the rises that batch noise alone makes largely cancel in their difference.

  Args:
    weight: ``λ >= 0``.
  """
  lam = jnp.float32(weight)

  def apply(value, low, context):
    low = jnp.where(context.run_start, jnp.inf, low)
    rise = jnp.maximum(value - low, 0.0)  # 0 at the run's first step here (low = inf)
    return value + lam * rise, jnp.minimum(low, value)

  return Term(lambda: jnp.float32(jnp.inf), apply)


def end_weight(power: float) -> Term:
  """``ℓ_t ← (p + 1) (t/T)^p ℓ_t``, ``t/T`` the step's :attr:`StepContext.fraction`.

  The weights of a whole run average to about 1; larger ``p`` moves the objective towards the
  end of the run, where every goal is read (VeLO meta-trains on the final loss,
  ``loss_type="last_recompute"``; Metz et al. 2022, arXiv 2211.09760, App. C).

  Args:
    power: ``p >= 0`` (0: every step alike).
  """

  def apply(value, carry, context):
    return value * ((power + 1.0) * context.fraction ** power), carry

  return Term(lambda: (), apply)


def from_config(config: Any) -> Term:
  """The chain an :class:`meta_train.unroll.UnrollConfig` sets: ``log_meta_loss``, then
  ``rise_penalty``, then ``end_weight`` (each left out at its default)."""
  terms = []
  if config.log_meta_loss:
    terms.append(log_loss())
  if config.rise_penalty:
    terms.append(rise_penalty(config.rise_penalty))
  if config.end_weight:
    terms.append(end_weight(config.end_weight))
  return chain(*terms)


def normalised(task: Any, raw: jax.Array, clip: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """``(ℓ̂, 1 if non-finite)``: the task's normaliser of ``raw``, clipped at the ceiling.

  The ceiling is the task's, or ``clip`` where that is lower (``0``: the task's). A non-finite
  ``raw`` counts as the ceiling. learned_optimization clips at about 1.3x a run's initial loss
  (``lopt_truncated_step.py``), so that a diverging particle costs a bounded amount (VeLO, arXiv
  2211.09760, App. C).

  Returns:
    ``(float32 normalised loss, int32 count)``.
  """
  finite = jnp.isfinite(raw)
  ceiling = jnp.asarray(task.ceiling, jnp.float32)
  norm = task.normalizer(jnp.where(finite, raw, 0.0))
  if clip:
    ceiling = jnp.minimum(ceiling, jnp.float32(clip))
    norm = jnp.minimum(norm, ceiling)
  norm = jnp.where(finite, norm, ceiling)
  return norm.astype(jnp.float32), (~finite).astype(jnp.int32)
