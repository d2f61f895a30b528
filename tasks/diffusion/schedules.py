"""Noise-level densities p(σ) and the maps between σ and variance-preserving (α, s) coordinates.

Every task works in EDM's σ-parameterisation (Karras et al. 2022, arXiv 2206.00364, Eq. 1 and
Table 1): a noisy sample is ``x = x0 + σ ε``. A variance-preserving (VP) diffusion
``z = α x0 + s ε`` with ``α² + s² = 1`` (Ho et al. 2020, arXiv 2006.11239) is the same thing
rescaled, ``z = α x`` with

.. math::
  \\alpha(\\sigma) = 1/\\sqrt{1 + \\sigma^2}, \\qquad s(\\sigma) = \\sigma/\\sqrt{1 + \\sigma^2},
  \\qquad \\mathrm{SNR}(\\sigma) = \\alpha^2 / s^2 = 1/\\sigma^2.

A "noise schedule" is then nothing but a density over σ used during training (Kingma & Gao 2023,
arXiv 2303.00848, Sec. 3; Dieleman 2024, "Noise schedules considered harmful"). Each schedule is
given by its quantile function ``σ(u)``, ``u ~ U(0, 1)``, so it can be sampled, stratified, and
integrated by deterministic quadrature (the normaliser does that):

* ``"linear"``: the linear-β VP schedule in continuous time (Ho et al. 2020, Sec. 4; Song et al.
  2021, arXiv 2011.13456, Eq. 33), ``σ(t)² = exp(β₀ t + ½(β₁ − β₀) t²) − 1``, t = u.
* ``"cosine"``: Nichol & Dhariwal 2021 (arXiv 2102.09672, Eq. 17),
  ``ᾱ(t) = f(t)/f(0)``, ``f(t) = cos²((t + s)/(1 + s) · π/2)``, ``σ² = 1/ᾱ − 1``.
* ``"edm"``: EDM's log-normal, ``ln σ ~ N(P_mean, P_std²)`` (Karras et al. 2022, Table 1).

All σ are clipped to ``[SIGMA_MIN, SIGMA_MAX]`` (EDM's range), which keeps every weighting finite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy import special

SCHEDULES: tuple[str, ...] = ("linear", "cosine", "edm")

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0

BETA_MIN, BETA_MAX = 0.1, 20.0  # continuous-time linear-β (Song et al. 2021)
COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal 2021
P_MEAN, P_STD = -1.2, 1.2  # EDM log-normal


def schedule_index(name: str) -> int:
  """Position of schedule ``name`` in :data:`SCHEDULES`; ``ValueError`` if unknown."""
  if name not in SCHEDULES:
    raise ValueError(f"Unknown noise schedule {name!r}; known: {', '.join(SCHEDULES)}")
  return SCHEDULES.index(name)


def clip_sigma(sigma: jax.Array) -> jax.Array:
  """Clips σ into ``[SIGMA_MIN, SIGMA_MAX]``."""
  return jnp.clip(sigma, SIGMA_MIN, SIGMA_MAX)


def linear_sigma(t: jax.Array) -> jax.Array:
  """σ(t) of the continuous linear-β VP schedule, ``σ² = expm1(β₀ t + ½(β₁ − β₀) t²)``."""
  return jnp.sqrt(jnp.expm1(BETA_MIN * t + 0.5 * (BETA_MAX - BETA_MIN) * t**2))


def cosine_sigma(t: jax.Array) -> jax.Array:
  """σ(t) of the cosine schedule, ``σ² = f(0)/f(t) − 1`` (capped near 10⁶ as t → 1).

  The cap keeps every intermediate finite: an ``inf`` inside ``sqrt`` may come out as NaN
  depending on how XLA compiles it, and clipping would not catch that.
  """
  phi = lambda u: (u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * (jnp.pi / 2)
  ratio = jnp.cos(phi(0.0)) / jnp.maximum(jnp.cos(phi(t)), 1e-6)
  return jnp.sqrt(jnp.maximum(ratio**2 - 1.0, 0.0))


def edm_sigma(u: jax.Array) -> jax.Array:
  """Quantile ``u`` of EDM's log-normal: ``σ = exp(P_mean + P_std Φ⁻¹(u))``."""
  return jnp.exp(P_MEAN + P_STD * special.ndtri(u))


_QUANTILES = (linear_sigma, cosine_sigma, edm_sigma)


def sigma_from_uniform(schedule: jax.Array | int, u: jax.Array) -> jax.Array:
  """Maps ``u ∈ (0, 1)`` to σ under schedule number ``schedule`` (may be traced), clipped.

  Args:
    schedule: index into :data:`SCHEDULES` (``lax.switch``, so one ``vmap`` covers all).
    u: uniforms, any shape.

  Returns:
    σ with the shape of ``u``, in ``[SIGMA_MIN, SIGMA_MAX]``.
  """
  u = jnp.asarray(u, jnp.float32)
  return clip_sigma(jax.lax.switch(schedule, _QUANTILES, u))


def stratified_uniforms(u0: jax.Array, n: int) -> jax.Array:
  """``u_i = (u₀ + i/n) mod 1``: one point per stratum ``[i/n, (i+1)/n)`` up to rotation.

  This is the low-discrepancy sampler of Kingma et al. 2021 (arXiv 2107.00630, App. I.1): it
  lowers the variance of a batch's loss without changing its expectation.
  """
  return jnp.clip(jnp.mod(u0 + jnp.arange(n) / n, 1.0), 1e-7, 1.0 - 1e-7)


def sample_sigma(schedule: jax.Array | int, key: jax.Array, n: int,
                 stratified: bool = True) -> jax.Array:
  """Draws ``n`` noise levels from p(σ) of ``schedule``.

  With ``stratified`` the uniforms are :func:`stratified_uniforms` of one ``u₀ ~ U(0, 1)``,
  otherwise i.i.d.
  """
  if stratified:
    u = stratified_uniforms(jax.random.uniform(key, ()), n)
  else:
    u = jnp.clip(jax.random.uniform(key, (n,)), 1e-7, 1.0 - 1e-7)
  return sigma_from_uniform(schedule, u)


def quadrature_sigmas(schedule: jax.Array | int, n: int = 256) -> jax.Array:
  """σ at the ``n`` mid-point quantiles ``(i + ½)/n`` of p(σ): ``mean f(σ_i) ≈ E_p[f(σ)]``."""
  return sigma_from_uniform(schedule, (jnp.arange(n) + 0.5) / n)


def vp_alpha(sigma: jax.Array) -> jax.Array:
  """VP signal scale ``α = 1/√(1 + σ²)``."""
  return jax.lax.rsqrt(1.0 + sigma**2)


def vp_scale(sigma: jax.Array) -> jax.Array:
  """VP noise scale ``s = σ/√(1 + σ²)`` (so ``α² + s² = 1``)."""
  return sigma * jax.lax.rsqrt(1.0 + sigma**2)


def snr(sigma: jax.Array) -> jax.Array:
  """Signal-to-noise ratio ``α²/s² = 1/σ²``."""
  return 1.0 / sigma**2


def sigma_from_log_snr(log_snr: jax.Array) -> jax.Array:
  """Inverse of ``log SNR = −2 log σ``."""
  return jnp.exp(-0.5 * log_snr)
