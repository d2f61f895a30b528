"""Prediction targets and preconditioning: what the network outputs and how it becomes x0.

Every target is an instance of EDM's preconditioned denoiser (Karras et al. 2022,
arXiv 2206.00364, Eq. 7 and Table 1):

.. math::
  D(x; \\sigma) = c_{skip}(\\sigma)\\, x + c_{out}(\\sigma)\\,
  F\\big(c_{in}(\\sigma)\\, x;\\ c_{noise}(\\sigma)\\big), \\qquad x = x_0 + \\sigma\\varepsilon

and the network's regression target is what makes ``D = x0``:
``F* = ((1 − c_skip) x0 − c_skip σ ε) / c_out``.

======  ===========================  ===============================  ============================
target  c_skip                       c_out                            F* (oracle output)
======  ===========================  ===============================  ============================
eps     1                            −σ                               ε (Ho et al. 2020, Eq. 11)
x0      0                            1                                x0
v       1/(1 + σ²)                   −σ/√(1 + σ²)                     α ε − s x0 (Salimans & Ho
                                                                      2022, arXiv 2202.00512, §4)
edm     σ_d²/(σ² + σ_d²)             σ σ_d/√(σ² + σ_d²)               (x0 − c_skip x)/c_out
======  ===========================  ===============================  ============================

``v`` uses the VP convention ``α² + s² = 1`` (unit data scale) whatever the data; ``edm`` uses
the data's σ_d, so the two coincide (up to sign) only when σ_d = 1. All targets share
``c_in = 1/√(σ² + σ_d²)`` (the input has unit variance) and ``c_noise = ¼ ln σ``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

TARGETS: tuple[str, ...] = ("eps", "x0", "v", "edm")


class Preconditioning(NamedTuple):
  """The coefficients of ``D = c_skip x + c_out F(c_in x; c_noise)``.

  ``one_minus_c_skip`` is ``1 − c_skip`` computed without cancellation at small σ.
  """

  c_skip: jax.Array
  one_minus_c_skip: jax.Array
  c_out: jax.Array
  c_in: jax.Array
  c_noise: jax.Array


def target_index(name: str) -> int:
  """Position of target ``name`` in :data:`TARGETS`; ``ValueError`` if unknown."""
  if name not in TARGETS:
    raise ValueError(f"Unknown prediction target {name!r}; known: {', '.join(TARGETS)}")
  return TARGETS.index(name)


def preconditioning(target: jax.Array | int, sigma: jax.Array,
                    sigma_data: float) -> Preconditioning:
  """The preconditioning of target number ``target`` (may be traced) at noise levels ``sigma``.

  Args:
    target: index into :data:`TARGETS` (``lax.switch``).
    sigma: noise levels, any shape.
    sigma_data: the data's root-mean-square σ_d.

  Returns:
    A :class:`Preconditioning` whose fields have the shape of ``sigma``.
  """
  sigma = jnp.asarray(sigma, jnp.float32)
  one, zero = jnp.ones_like(sigma), jnp.zeros_like(sigma)
  sd2 = sigma_data**2

  def eps():
    return one, zero, -sigma

  def x0():
    return zero, one, one

  def v():
    r = 1.0 + sigma**2
    return 1.0 / r, sigma**2 / r, -sigma * jax.lax.rsqrt(r)

  def edm():
    r = sigma**2 + sd2
    return sd2 / r, sigma**2 / r, sigma * sigma_data * jax.lax.rsqrt(r)

  c_skip, rest, c_out = jax.lax.switch(target, (eps, x0, v, edm))
  return Preconditioning(c_skip=c_skip, one_minus_c_skip=rest, c_out=c_out,
                         c_in=jax.lax.rsqrt(sigma**2 + sd2), c_noise=0.25 * jnp.log(sigma))


def _expand(c: jax.Array, like: jax.Array) -> jax.Array:
  """Appends trailing unit axes so a per-example coefficient broadcasts against ``like``."""
  c = jnp.asarray(c)
  return c.reshape(c.shape + (1,) * (like.ndim - c.ndim))


def regression_target(target: jax.Array | int, x0: jax.Array, noise: jax.Array,
                      sigma: jax.Array, sigma_data: float) -> jax.Array:
  """The oracle network output ``F* = ((1 − c_skip) x0 − c_skip σ ε)/c_out``.

  Args:
    target: index into :data:`TARGETS`.
    x0: clean data, shape ``(B, ...)``.
    noise: ε, same shape.
    sigma: per-example σ, shape ``(B,)`` (or a scalar).
    sigma_data: σ_d.

  Returns:
    The target ``F*`` with the shape of ``x0`` (for ``eps``: ε; ``x0``: x0; ``v``: α ε − s x0).
  """
  pc = preconditioning(target, sigma, sigma_data)
  e = lambda c: _expand(c, x0)
  return (e(pc.one_minus_c_skip) * x0 - e(pc.c_skip * sigma) * noise) / e(pc.c_out)


def denoised(target: jax.Array | int, x: jax.Array, output: jax.Array, sigma: jax.Array,
             sigma_data: float) -> jax.Array:
  """The x0 estimate ``D = c_skip x + c_out F`` implied by a network output ``F``."""
  pc = preconditioning(target, sigma, sigma_data)
  return _expand(pc.c_skip, x) * x + _expand(pc.c_out, x) * output


def eps_from_denoised(x: jax.Array, x0_hat: jax.Array, sigma: jax.Array) -> jax.Array:
  """The noise estimate ``ε̂ = (x − D)/σ`` implied by an x0 estimate (σ > 0)."""
  return (x - x0_hat) / _expand(sigma, x)


def v_from_denoised(x: jax.Array, x0_hat: jax.Array, sigma: jax.Array) -> jax.Array:
  """The VP velocity ``v̂ = α ε̂ − s x̂0`` implied by an x0 estimate (Salimans & Ho 2022, §4)."""
  sigma = _expand(sigma, x)
  alpha = jax.lax.rsqrt(1.0 + sigma**2)
  return alpha * (x - x0_hat) / sigma - alpha * sigma * x0_hat
