"""Small pytree helpers shared by the optimizers' ``init``/``update`` functions.

Per-parameter state is built by mapping over the params tree (never by flattening), so ``None``
leaves, ``optax.masked`` and tuple-valued params work. A per-leaf function that returns several
values wraps them in :class:`Leaf`, and :func:`unzip` splits the mapped tree back into one tree
per value. :func:`zeros_state` builds one leaf of zero state and :func:`check_trees` gives the
error every optimizer raises when ``update`` is called with trees of different structures.
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


def zeros_state(param: Any, dtype: Any = None) -> jax.Array:
  """One leaf of zero state: zeros shaped like a float ``param``, :func:`placeholder` otherwise.

  Args:
    param: a leaf of the params tree (an array of any dtype).
    dtype: dtype of the zeros: ``None`` for ``jnp.zeros_like(param)``, a dtype, or a function
      mapping ``param``'s dtype to the state's (e.g. promoting it to at least float32).

  Returns:
    ``zeros(shape(param), dtype)`` for a floating-point ``param``; the empty float32
    placeholder for integer and boolean leaves, which hold no state.
  """
  if not is_float(param):
    return placeholder()
  if dtype is None:
    return jnp.zeros_like(param)
  if callable(dtype) and not isinstance(dtype, type):
    dtype = dtype(param.dtype)
  return jnp.zeros(jnp.shape(param), dtype)


def check_trees(name: str, updates: Any, *trees: tuple[str, Any]) -> None:
  """Raises a ``ValueError`` naming the first tree whose structure differs from ``updates``'.

  Args:
    name: the optimizer's name, which starts the message.
    updates: the updates (gradients) tree passed to ``update``.
    *trees: ``(what, tree)`` pairs checked in order, e.g. ``("params", params)``; a ``None``
      tree (params an optimizer does not need) is skipped.

  Raises:
    ValueError: ``"<name>: the updates tree does not match the <what> tree"`` followed by both
      tree structures.
  """
  treedef = jax.tree.structure(updates)
  for what, tree in trees:
    if tree is not None and jax.tree.structure(tree) != treedef:
      raise ValueError(f"{name}: the updates tree does not match the {what} tree:\n"
                       f"  updates: {treedef}\n  {what}: {jax.tree.structure(tree)}")


def require_params(name: str, params: Any) -> None:
  """Raises a ``ValueError`` when an optimizer that reads parameter values gets ``params=None``."""
  if params is None:
    raise ValueError(f"{name}: update() needs `params` (parameter values are features); "
                     "call tx.update(grads, state, params).")
