"""The checks a learned optimizer must pass to be a drop-in optax optimizer, for your own too.

``check_learned_optimizer(lopt)`` runs the conformance checks this project holds its own
optimizers to (``tests/learned_opt/test_conformance.py`` runs them over the registry) on any
:class:`~learned_opt.base.LearnedOptimizer`: shapes and dtypes kept for scalar, 1-D, 2-D and 4-D
leaves in float32, bfloat16 and float16; no recompilation on the second step; unknown keywords
ignored; ``None`` and masked leaves; ``optax.MultiSteps``; state stable under ``lax.cond``;
the ``learning_rate`` multiplier exact; non-finite gradient entries kept to their entries;
``vmap`` over meta-parameters; and, for a registered optimizer, a save/load round trip that
gives bit-identical updates. It plays the part of learned_optimization's
``smoketest_learned_optimizer`` and optax's ``contrib/_common_test.py``.

Example::

  from learned_opt.testing import check_learned_optimizer
  passed = check_learned_optimizer(MyOptimizer())     # AssertionError naming a failed check

Every check is also a function of its own (``CHECKS``), taking ``(lopt, meta_params)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from learned_opt import base


def example_params(dtype=jnp.float32, seed: int = 5) -> dict[str, jax.Array]:
  """A vector and a matrix: the tree most checks train."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"vec": jax.random.normal(k1, (3,)).astype(dtype),
          "mat": jax.random.normal(k2, (3, 2)).astype(dtype)}


def every_rank_params(dtype=jnp.float32, seed: int = 0) -> dict[str, Any]:
  """Scalar, 1-D, 2-D and 4-D leaves, nested, in ``dtype``."""
  k = jax.random.split(jax.random.key(seed), 3)
  return {"scalar": jnp.asarray(0.7, dtype), "vec": jax.random.normal(k[0], (3,)).astype(dtype),
          "layer": {"mat": jax.random.normal(k[1], (3, 2)).astype(dtype),
                    "conv": jax.random.normal(k[2], (2, 1, 3, 2)).astype(dtype)}}


def tree_digest(tree) -> str:
  """sha256 over a tree's leaves, in tree order: each leaf's ``/``-joined path, then its bytes.

  Two trees have the same digest when their paths, dtypes' bytes and values are identical: a
  short way to pin meta-parameters or updates in a test.
  """
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    h.update("/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path).encode())
    h.update(np.asarray(leaf).tobytes())
  return h.hexdigest()


def example_grads(params, seed: int = 1):
  """Small random gradients shaped and typed like ``params``."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [(0.1 * jax.random.normal(k, p.shape)).astype(p.dtype)
                                      for k, p in zip(keys, leaves)])


def shapes_dtypes(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


def assert_bitwise_equal(a, b, what: str = "trees") -> None:
  """Same structure, shapes, dtypes and bytes."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    raise AssertionError(f"{what}: structures differ: {jax.tree.structure(a)} != "
                         f"{jax.tree.structure(b)}")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
      raise AssertionError(f"{what}: not bit-identical: {x!r} != {y!r}")


def assert_close(a, b, rtol: float = 1e-5, atol: float = 1e-9, what: str = "trees") -> None:
  """Leaf-wise ``allclose`` in float64 (so bf16 and f16 leaves compare too)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol,
                               atol=atol, err_msg=what)


class _Messages(logging.Handler):

  def __init__(self):
    super().__init__()
    self.messages: list[str] = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@contextlib.contextmanager
def count_compilations():
  """Yields a list that receives one entry per XLA compilation inside the block."""
  handler = _Messages()
  logger = logging.getLogger("jax")
  logger.addHandler(handler)
  compiled: list[str] = []
  try:
    with jax.log_compiles():
      yield compiled
  finally:
    logger.removeHandler(handler)
    compiled.extend(m for m in handler.messages if re.search(r"Finished .*compilation", m))


def _update(lopt, mp):
  return jax.jit(lambda g, s, p, lr=1.0: lopt.transform(mp, lr).update(g, s, p))


# ----------------------------------------------------------------------------- the checks


def check_shapes_and_dtypes(lopt, mp) -> None:
  """Updates and state keep every leaf's shape and dtype, for every rank and float dtype."""
  update = _update(lopt, mp)
  for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
    params = every_rank_params(dtype)
    state = lopt.transform(mp).init(params)
    updates, new_state = update(example_grads(params), state, params)
    if shapes_dtypes(updates) != shapes_dtypes(params):
      raise AssertionError(f"{dtype.__name__} updates change shape or dtype: "
                           f"{shapes_dtypes(updates)} for params {shapes_dtypes(params)}")
    if not all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates)):
      raise AssertionError(f"{dtype.__name__}: non-finite updates for finite gradients")
    if shapes_dtypes(new_state) != shapes_dtypes(state):
      raise AssertionError(f"{dtype.__name__}: the state changes shape or dtype in a step")


def check_no_recompilation(lopt, mp) -> None:
  """The second jitted step reuses the first step's program."""
  update = _update(lopt, mp)
  params = example_params()
  grads = example_grads(params)
  updates, state = update(grads, lopt.transform(mp).init(params), params)
  params = optax.apply_updates(params, updates)
  with count_compilations() as compiled:
    jax.block_until_ready(update(grads, state, params))
  if compiled:
    raise AssertionError(f"recompiled on the second step: {compiled}")


def check_extra_arguments(lopt, mp) -> None:
  """``update`` accepts ``loss=`` and ignores keywords it does not know."""
  tx = lopt.transform(mp)
  params = example_params()
  grads = example_grads(params)
  state = tx.init(params)
  plain, _ = tx.update(grads, state, params, loss=jnp.asarray(2.5))
  extra, _ = tx.update(grads, state, params, loss=jnp.asarray(2.5), unexpected_extra_arg=1)
  assert_bitwise_equal(plain, extra, "an unknown keyword changed the update")


def check_none_and_masked_leaves(lopt, mp) -> None:
  """``None`` leaves stay ``None``; ``optax.masked`` leaves pass through untouched."""
  update = _update(lopt, mp)
  params = example_params()
  grads = example_grads(params)
  ref, _ = update(grads, lopt.transform(mp).init(params), params)
  with_none = lambda t: {**t, "frozen": None}
  tx = lopt.transform(mp)
  out, _ = jax.jit(tx.update)(with_none(grads), tx.init(with_none(params)), with_none(params))
  if out["frozen"] is not None:
    raise AssertionError("a None leaf did not stay None")
  assert_close({k: v for k, v in out.items() if k != "frozen"}, ref,
               what="None leaves changed the other updates")
  full = {**params, "frozen": jnp.ones((2, 2))}
  g = {**grads, "frozen": jnp.full((2, 2), 0.5)}
  masked = optax.masked(lopt.transform(mp), {"vec": True, "mat": True, "frozen": False})
  out, _ = jax.jit(masked.update)(g, masked.init(full), full)
  np.testing.assert_array_equal(out["frozen"], g["frozen"], err_msg="a masked leaf changed")
  assert_close({"vec": out["vec"], "mat": out["mat"]}, ref, what="masking changed the updates")


def check_multisteps(lopt, mp) -> None:
  """Under ``optax.MultiSteps(every_k=2)`` the first update is exactly zero and the second is
  one real step on the mean gradient."""
  update = _update(lopt, mp)
  params = example_params()
  grads = example_grads(params)
  ms = optax.MultiSteps(lopt.transform(mp), every_k_schedule=2)
  ms_update = jax.jit(ms.update)
  first, state = ms_update(grads, ms.init(params), params, loss=jnp.asarray(1.0))
  for u in jax.tree.leaves(first):
    np.testing.assert_array_equal(u, np.zeros_like(u), err_msg="MultiSteps' first update")
  second, _ = ms_update(grads, state, params, loss=jnp.asarray(1.0))
  ref, _ = update(grads, lopt.transform(mp).init(params), params)
  assert_close(second, ref, what="MultiSteps' second update is not one step")


def check_state_stable_under_cond(lopt, mp) -> None:
  """Both branches of ``lax.cond`` (update or not) give states of one shape and dtype."""
  tx = lopt.transform(mp)
  for dtype in (jnp.float16, jnp.bfloat16, jnp.float32):
    target = jnp.asarray([1.0, -1.0, 1.0], dtype)
    params = {"x": jnp.asarray([-1.0, 10.0, 1.0], dtype)}

    @jax.jit
    def step(params, state, pick):
      value, grads = jax.value_and_grad(lambda p: jnp.sum(jnp.square(p["x"] - target)))(params)
      updates, state = jax.lax.cond(pick, lambda: tx.update(grads, state, params, loss=value),
                                    lambda: (jax.tree.map(jnp.zeros_like, params), state))
      return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for pick in (True, False):
      params, state = step(params, state, jnp.asarray(pick))
      if params["x"].dtype != dtype:
        raise AssertionError(f"{dtype.__name__} params became {params['x'].dtype}")


def check_learning_rate_multiplier(lopt, mp) -> None:
  """``transform(θ, lr)`` scales every update exactly (powers of two: exact in floating
  point), also as a schedule and under ``optax.inject_hyperparams``."""
  update = _update(lopt, mp)
  params = example_params()
  grads = example_grads(params)
  state = lopt.transform(mp).init(params)
  base_u, _ = update(grads, state, params, 1.0)
  for lr in (0.5, 4.0):
    u, _ = update(grads, state, params, lr)
    assert_bitwise_equal(u, jax.tree.map(lambda x, lr=lr: (lr * x).astype(x.dtype), base_u),
                         f"learning_rate={lr}")
  injected = optax.inject_hyperparams(lopt.transform)(mp, learning_rate=0.5)
  u, _ = jax.jit(injected.update)(grads, injected.init(params), params)
  assert_close(u, jax.tree.map(lambda x: 0.5 * x, base_u), rtol=1e-6,
               what="inject_hyperparams(learning_rate=0.5)")


def check_non_finite_gradients(lopt, mp) -> None:
  """A non-finite gradient entry gives a non-finite update at that entry only; other tensors
  are unaffected and the entry's tensor stays finite elsewhere."""
  update = _update(lopt, mp)
  params = example_params()
  grads = example_grads(params)
  state = lopt.transform(mp).init(params)
  clean, _ = update(grads, state, params)
  bad = {"vec": grads["vec"], "mat": grads["mat"].at[0, 1].set(jnp.nan)}
  u, _ = update(bad, state, params)
  assert_bitwise_equal(u["vec"], clean["vec"], "a NaN in another tensor changed this update")
  mat = np.asarray(u["mat"])
  at = np.zeros(mat.shape, bool)
  at[0, 1] = True
  if np.isfinite(mat[at]).any() or not np.isfinite(mat[~at]).all():
    raise AssertionError(f"a NaN gradient entry must give a non-finite update there only: {mat}")


def check_vmap_over_meta_params(lopt, mp) -> None:
  """Several meta-parameter vectors apply at once (how meta-training batches particles)."""
  params = example_params()
  grads = example_grads(params)
  stacked = jax.tree.map(lambda x: jnp.stack([x, x]), mp)

  def one(m):
    tx = lopt.transform(m)
    return tx.update(grads, tx.init(params), params)[0]

  out = jax.jit(jax.vmap(one))(stacked)
  ref = jax.jit(one)(mp)
  assert_close(jax.tree.map(lambda x: x[1], out), ref, rtol=1e-5,
               what="vmap over meta-parameters")


def check_save_load_round_trip(lopt, mp) -> None:
  """A registered optimizer saved and loaded gives bit-identical updates (skipped for an
  optimizer that is not registered: ``learned_opt.load`` could not rebuild it)."""
  if base.registry().get(lopt.name) is not type(lopt):
    return
  from learned_opt import serialization  # pylint: disable=import-outside-toplevel
  params = example_params()
  grads = example_grads(params)
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "opt.safetensors")
    serialization.save(path, lopt, mp)
    lopt2, mp2 = serialization.load(path)
  if lopt2 != lopt:
    raise AssertionError(f"loaded config differs: {lopt2} != {lopt}")
  a, _ = _update(lopt, mp)(grads, lopt.transform(mp).init(params), params)
  b, _ = _update(lopt2, mp2)(grads, lopt2.transform(mp2).init(params), params)
  assert_bitwise_equal(a, b, "updates after a save/load round trip")


CHECKS: dict[str, Callable[[Any, Any], None]] = {
    "shapes_and_dtypes": check_shapes_and_dtypes,
    "no_recompilation": check_no_recompilation,
    "extra_arguments": check_extra_arguments,
    "none_and_masked_leaves": check_none_and_masked_leaves,
    "multisteps": check_multisteps,
    "state_stable_under_cond": check_state_stable_under_cond,
    "learning_rate_multiplier": check_learning_rate_multiplier,
    "non_finite_gradients": check_non_finite_gradients,
    "vmap_over_meta_params": check_vmap_over_meta_params,
    "save_load_round_trip": check_save_load_round_trip,
}


def check_learned_optimizer(lopt: base.LearnedOptimizer, meta_params: Any = None, *,
                            key: jax.Array | None = None,
                            checks: tuple[str, ...] | None = None) -> tuple[str, ...]:
  """Runs the conformance checks on a learned optimizer.

  Args:
    lopt: any :class:`~learned_opt.base.LearnedOptimizer`.
    meta_params: its meta-parameters (default: ``lopt.init(key)``).
    key: PRNG key for ``init`` (default ``jax.random.key(0)``).
    checks: names from :data:`CHECKS` (default: all).

  Returns:
    The names of the checks run, in order.

  Raises:
    AssertionError: ``"learned_opt.testing: NAME failed for OPTIMIZER: ..."`` at the first
      failing check.
    ValueError: an unknown check name.
  """
  names = tuple(CHECKS) if checks is None else tuple(checks)
  unknown = [n for n in names if n not in CHECKS]
  if unknown:
    raise ValueError(f"unknown checks {unknown}; valid: {', '.join(CHECKS)}")
  if meta_params is None:
    meta_params = lopt.init(jax.random.key(0) if key is None else key)
  for name in names:
    try:
      CHECKS[name](lopt, meta_params)
    except AssertionError as e:
      raise AssertionError(f"learned_opt.testing: {name} failed for "
                           f"{getattr(lopt, 'name', type(lopt).__name__)}: {e}") from e
  return names
