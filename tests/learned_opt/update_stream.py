"""A fixed gradient stream, and what a learned optimizer's updates on it look like.

The file-format tests pin the updates of each committed v1 optimizer file: a file must load and
step as the code that wrote it did. Bytes are not portable: XLA compiles for the host CPU, and
on another CPU (or another XLA) a float32 sum may round differently in its last bit, so the
tests compare a summary of the updates (per step and tensor: the sum of squares and the
projection on a fixed pattern) with a recorded one to float32 rounding, and compare bytes only
within one process. The recorded summaries (``fixtures/update_stream_reference.json``) were
written by this code on the files it reads, which had reproduced the format-v1 code's update
hashes bit for bit on the machine those were recorded on (before the hardware changed).
Regenerate with ``python tests/learned_opt/update_stream.py --write``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "fixtures", "update_stream_reference.json")
# (name, file relative to the repository, eager steps or None for the jitted 100).
CASES = {
    "default_v1": ("tests/learned_opt/fixtures/v1_default.safetensors", None),
    "diffusion_v1": ("tests/learned_opt/fixtures/v1_diffusion.safetensors", None),
    "quickstart_v1": ("tests/learned_opt/fixtures/v1_quickstart.safetensors", None),
    "v1_normalize": ("tests/learned_opt/fixtures/v1_normalize.safetensors", None),
    "v1_normalize_eager": ("tests/learned_opt/fixtures/v1_normalize.safetensors", 30),
    "v1_schedule": ("tests/learned_opt/fixtures/v1_schedule.safetensors", None),
    "v1_schedule_eager": ("tests/learned_opt/fixtures/v1_schedule.safetensors", 30),
}


def params_tree():
  """A small parameter tree with one tensor above the fused-network threshold (16384)."""
  keys = jax.random.split(jax.random.key(7), 4)
  return {"big": 0.1 * jax.random.normal(keys[0], (160, 128), jnp.float32),
          "w": 0.3 * jax.random.normal(keys[1], (12, 5), jnp.float32),
          "b": jnp.zeros((5,), jnp.float32),
          "s": jnp.asarray(0.5, jnp.float32)}


def updates(tx, num_updates: int = 100, *, jit: bool = True):
  """Yields ``num_updates`` updates (dicts of numpy arrays) of ``tx`` on a fixed stream.

  The gradient at step ``t`` is ``p + 0.1 ξ_t`` (a noisy quadratic, ``ξ_t`` normal from a fixed
  key), the loss ``0.5 Σ p²`` is passed as ``loss=``, and the updates are applied. With
  ``jit=False`` every operation runs on its own, in the order the code writes it.
  """
  params = params_tree()
  state = tx.init(params)
  update = lambda g, s, p, l: tx.update(g, s, p, loss=l)
  update = jax.jit(update) if jit else update
  for t in range(num_updates):
    keys = jax.random.split(jax.random.fold_in(jax.random.key(3), t), len(params))
    grads = {k: p + 0.1 * jax.random.normal(kk, p.shape, p.dtype)
             for (k, p), kk in zip(sorted(params.items()), keys)}
    loss = 0.5 * sum(jnp.sum(p * p) for p in params.values())
    u, state = update(grads, state, params, loss)
    yield {k: np.asarray(v) for k, v in u.items()}
    params = jax.tree.map(lambda p, d: p + d, params, u)


def update_hash(tx, num_updates: int = 100, *, jit: bool = True) -> str:
  """sha256 of the bytes of the updates: equal only within one machine and XLA."""
  h = hashlib.sha256()
  for u in updates(tx, num_updates, jit=jit):
    for k in sorted(u):
      h.update(u[k].tobytes())
  return h.hexdigest()


def _pattern(shape) -> np.ndarray:
  """A fixed ±1 pattern of ``shape`` (from its size; no RNG of any library)."""
  n = int(np.prod(shape, dtype=np.int64))
  return np.where((np.arange(n) * 2654435761 % 7) < 3, -1.0, 1.0).reshape(shape)


def update_summary(tx, num_updates: int = 100, *, jit: bool = True) -> dict[str, list]:
  """Per step and tensor (sorted names): the update's sum of squares and its projection on a
  fixed ±1 pattern, in float64."""
  sumsq, proj = [], []
  for u in updates(tx, num_updates, jit=jit):
    v = [u[k].astype(np.float64) for k in sorted(u)]
    sumsq.append([float(np.sum(x * x)) for x in v])
    proj.append([float(np.sum(x * _pattern(x.shape))) for x in v])
  return {"sumsq": sumsq, "proj": proj}


def assert_matches(summary, reference, rtol: float = 2e-4) -> None:
  """``summary`` equals ``reference`` to float32 rounding compounded over the stream: sums of
  squares to ``rtol``, projections to ``rtol`` of the update's norm times sqrt(size)."""
  got, want = np.asarray(summary["sumsq"]), np.asarray(reference["sumsq"])
  assert got.shape == want.shape, (got.shape, want.shape)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-30)
  sizes = np.asarray([[int(np.prod(s)) for s in reference["shapes"]]])
  scale = np.sqrt(want * sizes) + 1e-30
  np.testing.assert_array_less(np.abs(np.asarray(summary["proj"]) - np.asarray(reference["proj"])),
                               rtol * scale)


def stream(name):
  """The (number of updates, jit) of the recorded case ``name``."""
  eager = CASES[name][1]
  return eager or 100, eager is None


def case(name):
  """The optimizer transformation of the recorded case ``name``."""
  import learned_opt  # pylint: disable=import-outside-toplevel
  lopt, theta = learned_opt.load(os.path.join(HERE, "..", "..", CASES[name][0]))
  return lopt.transform(theta, num_steps=200)


def reference(name):
  with open(REFERENCE, encoding="utf-8") as f:
    return json.load(f)[name]


if __name__ == "__main__":
  if sys.argv[1:] != ["--write"]:
    sys.exit("usage: python tests/learned_opt/update_stream.py --write")
  shapes = [list(params_tree()[k].shape) for k in sorted(params_tree())]
  out = {}
  for name in CASES:
    n, jit = stream(name)
    out[name] = dict(update_summary(case(name), n, jit=jit), shapes=shapes)
    print(name, "written")
  with open(REFERENCE, "w", encoding="utf-8") as f:
    json.dump(out, f, separators=(",", ":"))
    f.write("\n")
