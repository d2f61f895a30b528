"""Noisy quadratic tasks with a known optimum, for exact tests of optimizers and estimators.

.. math::
  f(x; \\xi) = \\tfrac12 (x - x^*)^\\top A (x - x^*) + \\sigma\\, \\xi^\\top x,
  \\qquad A = Q\\,\\mathrm{diag}(\\lambda)\\,Q^\\top,\\ \\xi \\sim \\mathcal N(0, I)

The noise term has mean zero, so the expected loss is the pure quadratic, its minimiser is
``x*`` and the gradient is ``A (x - x*) + σ ξ``. ``"valid"`` and ``"test"`` batches have
``ξ = 0`` (the exact loss), and so does every :meth:`QuadraticTask.eval_batch`. The dimension is fixed per family; eigenvalues (log-uniform over ``condition`` range),
rotation, optimum, initial scale and noise scale are sampled per task. The Hessian is built once
per task in :meth:`QuadraticFamily.sample` (it is part of ``task_params``), so an inner step costs
one matrix-vector product.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from tasks import base


@jax.custom_jvp
def _half_quadratic_form(a: jax.Array, r: jax.Array) -> jax.Array:
  """``½ rᵀ A r`` for a symmetric ``A``, with one product ``A r`` shared by value and gradient.

  Written as an elementwise product and a reduction (not ``dot``): XLA fuses it with its inputs,
  which on CPU is much cheaper than a dot call at these tiny sizes. The JVP
  ``(A r)·dr + ½ rᵀ dA r`` is itself differentiable, so higher-order derivatives work.
  """
  return 0.5 * jnp.sum(r * _matvec(a, r))


def _matvec(a: jax.Array, r: jax.Array) -> jax.Array:
  return jnp.sum(a * r[..., None, :], axis=-1)


@functools.partial(_half_quadratic_form.defjvp, symbolic_zeros=True)
def _half_quadratic_form_jvp(primals, tangents):
  (a, r), (da, dr) = primals, tangents
  ar = _matvec(a, r)
  value = 0.5 * jnp.sum(r * ar)
  tangent = jnp.zeros_like(value)
  if not isinstance(dr, SymbolicZero):
    tangent = tangent + jnp.sum(ar * dr)
  if not isinstance(da, SymbolicZero):
    tangent = tangent + 0.5 * jnp.sum(r * _matvec(da, r))
  return value, tangent


@dataclasses.dataclass(frozen=True)
class QuadraticTask(base.Task):
  """One quadratic ``½(x − x*)ᵀA(x − x*) + σ ξᵀx``; all fields may be traced arrays."""

  hessian: jax.Array  # A, (d, d), symmetric positive definite
  optimum: jax.Array  # x*, (d,)
  init_scale: jax.Array  # x0 ~ x* + init_scale * N(0, I)
  noise_scale: jax.Array  # σ
  name: str = "quadratic"
  ceiling: float = base.DEFAULT_CEILING

  def init(self, key):
    d = self.optimum.shape[-1]
    return {"x": self.optimum + self.init_scale * jax.random.normal(key, (d,))}

  def sample_batch(self, key, split="train"):
    base.check_split(split)
    d = self.optimum.shape[-1]
    if split != "train":
      return {"xi": jnp.zeros((d,))}
    return {"xi": jax.random.normal(key, (d,))}

  def eval_batch(self, split):
    """The ``ξ = 0`` batch (the exact loss) for every split."""
    base.check_split(split)
    return {"xi": jnp.zeros(self.optimum.shape[-1:])}

  def loss(self, params, key, batch):
    del key
    r = params["x"] - self.optimum
    return _half_quadratic_form(self.hessian, r) + self.noise_scale * batch["xi"] @ params["x"]

  def exact_loss(self, params):
    """The noise-free loss ``½(x − x*)ᵀA(x − x*)`` (its minimum is 0 at ``x*``)."""
    r = params["x"] - self.optimum
    return 0.5 * r @ self.hessian @ r

  def exact_grad(self, params):
    """The noise-free gradient ``A(x − x*)``."""
    return {"x": self.hessian @ (params["x"] - self.optimum)}

  def normalizer(self, loss):
    # Expected initial loss is ½ init_scale² tr(A); divide by it so tasks share a scale.
    ref = 0.5 * self.init_scale**2 * jnp.trace(self.hessian) + 1e-12
    return base.clip_to_ceiling(loss / ref, self.ceiling, -self.ceiling)


@dataclasses.dataclass(frozen=True)
class QuadraticFamily(base.TaskFamily):
  """Quadratics of a fixed dimension with sampled conditioning, optimum, init and noise.

  Attributes:
    dim: dimension d of x.
    min_eig, max_eig: eigenvalues are log-uniform in ``[min_eig, max_eig]``.
    rotate: apply a random orthogonal rotation (otherwise A is diagonal).
    init_scale: range ``(lo, hi)``; log-uniform per task.
    noise_scale: range ``(lo, hi)`` of σ; uniform per task (``(0, 0)`` gives exact gradients).
  """

  dim: int = 10
  min_eig: float = 0.1
  max_eig: float = 10.0
  rotate: bool = True
  init_scale: tuple[float, float] = (0.5, 2.0)
  noise_scale: tuple[float, float] = (0.0, 0.1)
  name: str = "quadratic"

  def __post_init__(self):
    if not isinstance(self.dim, int) or self.dim <= 0:
      raise ValueError(f"QuadraticFamily.dim must be a positive int, got {self.dim!r}")
    if not 0 < self.min_eig <= self.max_eig:
      raise ValueError(f"QuadraticFamily needs 0 < min_eig <= max_eig, got "
                       f"{self.min_eig}, {self.max_eig}")
    if not 0 < self.init_scale[0] <= self.init_scale[1]:
      raise ValueError(f"QuadraticFamily.init_scale must be 0 < lo <= hi, got {self.init_scale}")
    if not 0 <= self.noise_scale[0] <= self.noise_scale[1]:
      raise ValueError(f"QuadraticFamily.noise_scale must be 0 <= lo <= hi, got {self.noise_scale}")

  def sample(self, key):
    k_eig, k_rot, k_opt, k_init, k_noise = jax.random.split(key, 5)
    d = self.dim
    log_eig = jax.random.uniform(k_eig, (d,), minval=jnp.log(self.min_eig),
                                 maxval=jnp.log(self.max_eig))
    if self.rotate:
      q, _ = jnp.linalg.qr(jax.random.normal(k_rot, (d, d)))
    else:
      q = jnp.eye(d)
    lo, hi = self.init_scale
    eig = jnp.exp(log_eig)
    a = (q * eig) @ q.T
    return {
        "eigenvalues": eig,
        "rotation": q,
        "hessian": 0.5 * (a + a.T),
        "optimum": jax.random.normal(k_opt, (d,)),
        "init_scale": jnp.exp(jax.random.uniform(k_init, (), minval=jnp.log(lo),
                                                 maxval=jnp.log(hi))),
        "noise_scale": jax.random.uniform(k_noise, (), minval=self.noise_scale[0],
                                          maxval=self.noise_scale[1]),
    }

  def task(self, task_params):
    return QuadraticTask(hessian=task_params["hessian"], optimum=task_params["optimum"],
                         init_scale=task_params["init_scale"],
                         noise_scale=task_params["noise_scale"],
                         name=f"{self.name}_d{self.dim}")


base.register_family("quadratic", QuadraticFamily)
