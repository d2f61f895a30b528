"""On-disk cache of baseline curves, so evaluating a new optimizer does not retrain Adam.

One ``.npz`` file per (family, task and seed draws, run length, recording interval, measured
splits, baseline and its settings, learning rate, jax and optax versions): its name is the SHA-256 of a JSON key holding all of them. Files hold plain arrays
and are read with ``allow_pickle=False``; writes are atomic (temporary file + rename), so
concurrent or interrupted evaluations never leave a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
import optax

from meta_train.evaluation import curves as curves_lib

FORMAT_VERSION = 2
ENV_VAR = "LEARNED_OPT_CACHE_DIR"


def default_dir() -> str:
  """``$LEARNED_OPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/learned_opt/meta_eval``, else
  ``~/.cache/learned_opt/meta_eval``."""
  if os.environ.get(ENV_VAR):
    return os.environ[ENV_VAR]
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "learned_opt", "meta_eval")


def fingerprint(*arrays: Any) -> str:
  """SHA-256 of the values, shapes and dtypes of array pytrees (task parameters, run keys)."""
  h = hashlib.sha256()
  for tree in arrays:
    for leaf in jax.tree.leaves(tree):
      if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
      a = np.asarray(leaf)
      h.update(f"{a.dtype}{a.shape}".encode())
      h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def entry_key(*, family: str, draws: str, num_steps: int, every: int, schedule: str,
              learning_rate: float) -> dict[str, Any]:
  """The JSON-able key of one cached baseline run set."""
  return {"format": FORMAT_VERSION, "family": family, "draws": draws, "num_steps": num_steps,
          "every": every, "splits": list(curves_lib.SPLITS), "schedule": schedule,
          "learning_rate": float(learning_rate), "jax": jax.__version__,
          "optax": optax.__version__}


class CurveCache:
  """Baseline curves keyed by :func:`entry_key`; ``cache_dir=None`` disables caching."""

  def __init__(self, cache_dir: str | None):
    self.dir = cache_dir
    self.hits = 0
    self.misses = 0

  def _path(self, key: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return os.path.join(self.dir, f"{digest}.npz")

  def get(self, key: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None (missing, unreadable, or written under another key)."""
    if self.dir is None:
      return None
    path = self._path(key)
    try:
      with np.load(path, allow_pickle=False) as data:
        if str(data["key"]) != json.dumps(key, sort_keys=True):
          return None
        out = {k: data[k] for k in data.files if k != "key"}
    except (OSError, ValueError, KeyError):
      self.misses += 1
      return None
    self.hits += 1
    return out

  def put(self, key: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Stores ``arrays`` under ``key`` (atomically)."""
    if self.dir is None:
      return
    os.makedirs(self.dir, exist_ok=True)
    path = self._path(key)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, key=np.array(json.dumps(key, sort_keys=True)), **arrays)
    os.replace(tmp, path)
