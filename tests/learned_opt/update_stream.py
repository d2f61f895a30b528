"""A fixed gradient stream and the sha256 hash of a learned optimizer's updates on it.

The file-format tests pin the bytes of 100 updates of each committed optimizer file: a file
must load and step bit-identically across changes of the code that reads it. Run as a script
to print the hashes (``python tests/learned_opt/update_stream.py``).
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np


def params_tree():
  """A small parameter tree with one tensor above the fused-network threshold (16384)."""
  keys = jax.random.split(jax.random.key(7), 4)
  return {"big": 0.1 * jax.random.normal(keys[0], (160, 128), jnp.float32),
          "w": 0.3 * jax.random.normal(keys[1], (12, 5), jnp.float32),
          "b": jnp.zeros((5,), jnp.float32),
          "s": jnp.asarray(0.5, jnp.float32)}


def update_hash(tx, num_updates: int = 100, *, jit: bool = True) -> str:
  """sha256 of the bytes of ``num_updates`` updates of ``tx`` on a fixed gradient stream.

  The gradient at step ``t`` is ``p + 0.1 ξ_t`` (a noisy quadratic, ``ξ_t`` normal from a fixed
  key), the loss ``0.5 Σ p²`` is passed as ``loss=``, and the updates are applied. With
  ``jit=False`` every operation runs on its own, in the order the code writes it (XLA may
  reassociate a product across functions it compiles together, which moves the last bit).
  """
  params = params_tree()
  state = tx.init(params)
  update = lambda g, s, p, l: tx.update(g, s, p, loss=l)
  update = jax.jit(update) if jit else update
  h = hashlib.sha256()
  for t in range(num_updates):
    keys = jax.random.split(jax.random.fold_in(jax.random.key(3), t), len(params))
    grads = {k: p + 0.1 * jax.random.normal(kk, p.shape, p.dtype)
             for (k, p), kk in zip(sorted(params.items()), keys)}
    loss = 0.5 * sum(jnp.sum(p * p) for p in params.values())
    updates, state = update(grads, state, params, loss)
    for k in sorted(updates):
      h.update(np.asarray(updates[k]).tobytes())
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  return h.hexdigest()


if __name__ == "__main__":
  import os
  import learned_opt
  here = os.path.dirname(os.path.abspath(__file__))
  for name in learned_opt.list_pretrained():
    lopt, theta = learned_opt.load_pretrained(name)
    print(name, update_hash(lopt.transform(theta, num_steps=200)))
  for f in sorted(os.listdir(os.path.join(here, "fixtures"))):
    lopt, theta = learned_opt.load(os.path.join(here, "fixtures", f))
    tx = lopt.transform(theta, num_steps=200)
    print(f, update_hash(tx), "eager(30):", update_hash(tx, 30, jit=False))
