"""Small pytree helpers shared by the learned optimizers' ``init``/``update`` functions.

Per-parameter state is built by mapping over the params tree (never by flattening), so ``None``
leaves, ``optax.masked`` and tuple-valued params work. A per-leaf function that returns several
values wraps them in :class:`Leaf`, and :func:`unzip` splits the mapped tree back into one tree
per value.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


class Leaf:
  """Per-leaf results of a ``jax.tree.map``: a plain class, so pytrees treat it as one leaf.

  (Returning tuples instead would be ambiguous when the params tree itself contains tuples.)
  """

  def __init__(self, *values):
    self.values = values


def unzip(tree: Any, n: int) -> tuple[Any, ...]:
  """Splits a tree of :class:`Leaf` into ``n`` trees, one per value."""
  return tuple(jax.tree.map(lambda o, i=i: o.values[i], tree) for i in range(n))


def is_float(x: Any) -> bool:
  """True for floating-point arrays; False for ``None``, integer and boolean leaves."""
  return x is not None and hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def placeholder() -> jax.Array:
  """The empty float32 state kept for leaves that have no state (integer/bool params)."""
  return jnp.zeros((0,), jnp.float32)
