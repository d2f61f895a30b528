"""Per-leaf pytree helpers shared by every optimizer (learned_opt.tree_utils)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learned_opt import tree_utils


def test_zeros_state_dtypes_and_placeholders():
  p = jnp.ones((2, 3), jnp.bfloat16)
  for dtype, expected in ((None, jnp.bfloat16), (jnp.float32, jnp.float32),
                          (lambda d: jnp.promote_types(d, jnp.float32), jnp.float32)):
    z = tree_utils.zeros_state(p, dtype)
    assert z.shape == (2, 3) and z.dtype == expected
    np.testing.assert_array_equal(np.asarray(z, np.float32), 0.0)
  for leaf in (jnp.arange(3), jnp.asarray([True]), None):
    z = tree_utils.zeros_state(leaf, jnp.float32)
    assert z.shape == (0,) and z.dtype == jnp.float32


def test_check_trees_names_the_first_mismatching_tree():
  updates = {"a": 1.0, "b": 2.0}
  same = {"a": 0.0, "b": 0.0}
  other = {"a": 0.0}
  tree_utils.check_trees("opt", updates, ("params", same), ("optimizer state", same))
  tree_utils.check_trees("opt", updates, ("params", None))  # optional params: skipped
  with pytest.raises(ValueError) as info:
    tree_utils.check_trees("opt", updates, ("params", same), ("optimizer state", other),
                           ("params again", other))
  assert str(info.value) == (
      "opt: the updates tree does not match the optimizer state tree:\n"
      f"  updates: {jax.tree.structure(updates)}\n"
      f"  optimizer state: {jax.tree.structure(other)}")


def test_require_params():
  tree_utils.require_params("opt", {})
  with pytest.raises(ValueError, match=r"^opt: update\(\) needs `params`"):
    tree_utils.require_params("opt", None)


def test_leaf_and_unzip_keep_tuple_valued_params():
  tree = {"t": (jnp.ones(2), jnp.zeros(1)), "n": None}
  out = jax.tree.map(lambda x: tree_utils.Leaf(x + 1, x * 2), tree)
  plus, times = tree_utils.unzip(out, 2)
  assert plus["n"] is None and times["n"] is None
  np.testing.assert_array_equal(plus["t"][0], [2.0, 2.0])
  np.testing.assert_array_equal(times["t"][1], [0.0])
