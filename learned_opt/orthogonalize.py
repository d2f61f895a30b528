"""An orthogonalising harness: a learned share of each weight matrix's update made orthogonal.

Composed after a rule, the rule says how large each matrix's step is and the harness says in
which direction, as Muon orthogonalises momentum (Jordan et al. 2024; ``optax.contrib.muon``)::

  lopt = learned_opt.chain(learned_opt.MLPOptimizer(), learned_opt.Orthogonalize())

Its two meta-parameters are global: how much of the orthogonal direction to take, and a
log multiplier of the matrices' steps. Few meta-parameters, so ES moves them quickly.
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

# Muon's quintic Newton–Schulz coefficients (a, b, c) of X ← aX + (bA + cA²)X, A = XXᵀ: chosen
# to raise small singular values fast; the result's singular values land in about [0.7, 1.2].
NS_COEFFS = (3.4445, -4.7750, 2.0315)
# ε under the Frobenius norm that scales the matrix into the iteration's basin, and under the
# mean squares of the RMS matching.
_EPS = 1e-12


def newton_schulz(x: jax.Array, steps: int = 5) -> jax.Array:
  """An approximately orthogonal matrix with ``x``'s singular vectors (``U S' Vᵀ``, ``S' ≈ I``).

  .. math::
    X_0 = x / (\\lVert x \\rVert_F + ε),\\qquad
    X_{k+1} = a X_k + (b A_k + c A_k^2) X_k,\\quad A_k = X_k X_k^\\top

  computed on the wide orientation (``m ≤ n``), in float32 or ``x``'s wider float type.

  Args:
    x: a matrix ``(m, n)``.
    steps: iterations.

  Returns:
    ``(m, n)`` in float32 (float64 for a float64 ``x``); zero for a zero matrix.

  References:
    Jordan et al., "Muon: an optimizer for hidden layers", 2024 (the coefficients);
    ``optax.contrib.muon``.
  """
  if x.ndim != 2:
    raise ValueError(f"newton_schulz takes a matrix, got shape {x.shape}")
  a, b, c = NS_COEFFS
  tall = x.shape[0] > x.shape[1]
  y = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  y = y.T if tall else y
  y = y / (jnp.sqrt(jnp.sum(y * y)) + _EPS)
  for _ in range(steps):
    g = y @ y.T
    y = a * y + (b * g + c * g @ g) @ y
  return y.T if tall else y


def as_matrix_shape(shape, kernels: bool = False) -> tuple[int, int] | None:
  """The matrix the harness orthogonalises a tensor of ``shape`` as, or ``None`` to leave it.

  A 2-D tensor is itself; with ``kernels``, a tensor of 3 or more axes whose last axis is its
  output (flax and haiku: a conv kernel ``(h, w, in, out)``) is the ``(fan-in, out)`` matrix,
  as Muon orthogonalises conv filters (Jordan et al. 2024). Both sides must exceed 1.
  """
  if len(shape) == 2:
    rows, cols = shape
  elif kernels and len(shape) >= 3:
    rows, cols = math.prod(shape[:-1]), shape[-1]
  else:
    return None
  return (rows, cols) if min(rows, cols) > 1 else None


def is_matrix(u, kernels: bool = False) -> bool:
  """Whether the harness orthogonalises ``u``: a floating tensor :func:`as_matrix_shape`
  takes."""
  return (u is not None and jnp.issubdtype(jnp.asarray(u).dtype, jnp.floating)
          and as_matrix_shape(tuple(u.shape), kernels) is not None)


@base.register
@dataclasses.dataclass(frozen=True)
class Orthogonalize(base.LearnedOptimizer):
  """Mixes each weight matrix's update with its orthogonalisation at the same RMS.

  For every 2-D floating update ``u`` (both sides > 1):

  .. math::
    o = \\mathrm{NS}(u)\\,\\frac{\\mathrm{rms}(u)}{\\mathrm{rms}(\\mathrm{NS}(u))},\\qquad
    u \\leftarrow e^{β}\\big((1 - σ(α))\\,u + σ(α)\\,o\\big)

  with ``NS`` :func:`newton_schulz`, ``σ`` the logistic function and ``θ = {"mix": α,
  "log_scale": β}`` scalars. Vectors, scalars and integer leaves pass unchanged (as Muon
  leaves them to Adam). Non-finite entries count as zero in the orthogonalisation and keep
  their value, so a ``nan`` stays in its entry. Each update keeps its dtype.

  With ``kernels``, conv kernels are mixed too, each as its ``(fan-in, out)`` matrix
  (:func:`as_matrix_shape`; the last axis is the output, as in flax and haiku).

  Attributes:
    initial_mix: ``σ(α)`` of :meth:`init` (``β`` starts at 0), in ``(0, 1)``.
    steps: Newton–Schulz iterations.
    kernels: also orthogonalise tensors of 3 or more axes as ``(fan-in, out)`` matrices.
    horizon_aware: meta-trained seeing each run's length as ``num_steps`` (unused here).

  References:
    Jordan et al., "Muon: an optimizer for hidden layers", 2024; Moudgil et al., Celo2, 2026,
    arXiv 2602.19142 (a learned rule inside an orthogonalising harness).
  """

  name = "orthogonalize"
  initial_mix: float = 0.9
  steps: int = 5
  kernels: bool = False
  horizon_aware: bool = False

  def __post_init__(self):
    if not 0.0 < self.initial_mix < 1.0:
      raise ValueError(f"initial_mix must be in (0, 1), got {self.initial_mix!r}")
    if not (isinstance(self.steps, int) and self.steps >= 1):
      raise ValueError(f"steps must be a positive int, got {self.steps!r}")
    if not isinstance(self.kernels, bool):
      raise ValueError(f"kernels must be a bool, got {self.kernels!r}")

  def init(self, key: jax.Array) -> base.MetaParams:
    del key
    logit = math.log(self.initial_mix / (1.0 - self.initial_mix))
    return {"mix": jnp.asarray(logit, jnp.float32), "log_scale": jnp.zeros((), jnp.float32)}

  def scale_by(self, meta_params, *, num_steps=None):
    """The mix and scale of each matrix's update as an optax transformation (stateless)."""
    del num_steps
    base.check_meta_params(self.name, meta_params, {"mix": (), "log_scale": ()})
    mix = jax.nn.sigmoid(meta_params["mix"])
    scale = jnp.exp(meta_params["log_scale"])

    def one(u):
      if not is_matrix(u, self.kernels):
        return u
      finite = jnp.isfinite(u)
      clean = jnp.where(finite, u, 0).astype(jnp.promote_types(u.dtype, jnp.float32))
      o = newton_schulz(clean.reshape(as_matrix_shape(u.shape, self.kernels)), self.steps)
      o = o.reshape(u.shape)
      o = o * (feats_lib.inverse_rms(o, _EPS) / feats_lib.inverse_rms(clean, _EPS))
      out = scale * ((1.0 - mix) * clean + mix * o)
      return jnp.where(finite, out, u).astype(u.dtype)

    def update_fn(updates, state, params=None, **extra_args):
      del extra_args
      if params is not None:
        tree_utils.check_trees(self.name, updates, ("params", params))
      return jax.tree.map(one, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)
