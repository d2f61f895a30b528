"""Orbax checkpoints of the whole meta-trainer state, with integrity checks for bit-exact resume.

Each checkpoint is an orbax ``CheckpointManager`` step holding two items: ``state`` (the
leaves of the :class:`~meta_train.trainer.MetaTrainerState`, a pytree of plain arrays, as a flat
dict; zero-size leaves, which orbax cannot write, are rebuilt from the template) and ``meta``
(JSON: the step, the leaves' tree paths and a SHA-256 digest of every leaf's path, dtype, shape
and bytes). Restoring re-computes the
digest, so a truncated, deleted or silently altered file in a step directory is detected; such a
step is moved aside to ``<run_dir>/corrupt_checkpoints/`` with a warning and the previous step is
tried instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CorruptCheckpointWarning(UserWarning):
  """A checkpoint step could not be restored or failed its digest and was skipped."""


def tree_digest(tree: Any) -> str:
  """SHA-256 over the leaves' paths, dtypes, shapes and bytes (host copies)."""
  h = hashlib.sha256()
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  for path, leaf in leaves:
    a = np.asarray(jax.device_get(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str(a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _paths(tree: Any) -> list[str]:
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _to_flat(tree: Any) -> dict[str, Any]:
  """``{"leaf_00000": leaf, ...}`` without zero-size leaves (orbax cannot save them)."""
  return {f"leaf_{i:05d}": x for i, x in enumerate(jax.tree.leaves(tree)) if np.size(x)}


def _from_flat(flat: dict[str, Any], template: Any) -> Any:
  """Inverse of :func:`_to_flat`; zero-size leaves are rebuilt from ``template``'s shapes."""
  leaves, treedef = jax.tree.flatten(template)
  out = [flat[f"leaf_{i:05d}"] if np.size(x) else jax.numpy.zeros(x.shape, x.dtype)
         for i, x in enumerate(leaves)]
  return jax.tree.unflatten(treedef, out)


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
  """Shape, dtype and sharding of a leaf (this process's first device if it has no sharding,
  or one that spans other processes: each process restores a whole copy)."""
  sharding = getattr(x, "sharding", None)
  if sharding is None or not sharding.is_fully_addressable:  # other processes' devices
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


class IncompatibleCheckpointError(ValueError):
  """A checkpoint holds a state of another structure than the template (not corruption)."""


class Checkpointer:
  """Saves and restores meta-trainer states in ``directory`` (an orbax CheckpointManager).

  Args:
    directory: where step directories are written (created if missing).
    max_to_keep: how many of the newest checkpoints stay on disk.
    quarantine_dir: where corrupt step directories are moved (default: a sibling
      ``corrupt_checkpoints`` directory).
    use_async: write in a background thread (orbax's asynchronous checkpointing).
    writer: whether this process saves (default: process 0 only). In a multi-process run each
      process gets a manager of its own (orbax ``MultiprocessingOptions`` with
      ``active_processes={this process}``), so no orbax barrier involves the others: the writer
      saves host copies of the whole state (see ``meta_train.runtime.distributed.to_host``) and
      every process restores from the shared directory by itself.

  Example::

    ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=3)
    ckpt.save(100, state)
    restored = ckpt.restore_latest(template=state)   # (step, state) or None
    ckpt.close()
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
               quarantine_dir: str | os.PathLike | None = None, use_async: bool = True,
               writer: bool | None = None):
    self.directory = os.path.abspath(os.fspath(directory))
    parent = os.path.dirname(self.directory)
    self.quarantine_dir = os.fspath(quarantine_dir or os.path.join(parent, "corrupt_checkpoints"))
    self.writer = jax.process_index() == 0 if writer is None else writer
    multi = {}
    if jax.process_count() > 1:
      me = jax.process_index()
      multi["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
          primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"ckpt{me}")
      if self.writer:
        os.makedirs(self.directory, exist_ok=True)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep if self.writer else None, create=jax.process_count() == 1,
        cleanup_tmp_directories=self.writer, enable_async_checkpointing=use_async,
        read_only=not self.writer, **multi)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))
    self.restored_meta: dict[str, Any] | None = None

  def all_steps(self) -> list[int]:
    """Steps with a finalised checkpoint, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, extra: dict[str, Any] | None = None) -> None:
    """Checkpoints ``state`` as ``step`` (asynchronously if enabled); ``step`` must be new.

    ``extra`` (JSON values) is stored in the step's metadata, e.g. the device count; the
    metadata of the step :meth:`restore_latest` returned is in :attr:`restored_meta`.
    """
    if not self.writer:
      raise RuntimeError("this Checkpointer is not the writer (only process 0 saves)")
    meta = {"step": int(step), "digest": tree_digest(state), "paths": _paths(state),
            "time": time.time(), **(extra or {})}
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_flat(state)), meta=ocp.args.JsonSave(meta)), force=True)

  def _read_meta(self, step: int) -> dict[str, Any]:
    meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = meta["meta"]
    if not isinstance(meta, dict) or meta.get("step") != step:
      raise ValueError(f"metadata of step {step} is missing or names another step: {meta}")
    return meta

  def _restore_step(self, step: int, template: Any, meta: dict[str, Any]) -> Any:
    abstract = jax.tree.map(_abstract, _to_flat(template))
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    state = _from_flat(out["state"], template)
    digest = tree_digest(state)
    if digest != meta.get("digest"):
      raise ValueError(f"digest mismatch (stored {meta.get('digest')}, read {digest})")
    return state

  def restore_latest(self, template: Any) -> tuple[int, Any] | None:
    """``(step, state)`` of the newest checkpoint that restores intact, or None.

    ``template`` is a state of the same structure, shapes, dtypes (and shardings), concrete or
    abstract (e.g. ``jax.eval_shape(trainer.init, key)``, which compiles nothing). Corrupt steps are quarantined with a
    :class:`CorruptCheckpointWarning` naming the step and the reason.

    Raises:
      IncompatibleCheckpointError: a readable checkpoint holds another state structure
        (nothing is moved).
    """
    self.wait()
    paths = _paths(template)
    for step in reversed(self.all_steps()):
      try:
        meta = self._read_meta(step)
      except Exception as e:  # pylint: disable=broad-except
        self._skip(step, e)
        continue
      if meta.get("paths") != paths:
        raise IncompatibleCheckpointError(
            f"checkpoint step {step} in {self.directory} holds a state of another structure "
            f"({len(meta.get('paths') or [])} leaves, expected {len(paths)}): it was written "
            f"by another version or configuration")
      try:
        state = self._restore_step(step, template, meta)
        self.restored_meta = meta
        return step, state
      except Exception as e:  # pylint: disable=broad-except
        self._skip(step, e)
    return None

  def _skip(self, step: int, e: Exception) -> None:
    moved = self._quarantine(step) if self.writer else "(left in place: not the writer)"
    reason = str(e).splitlines()[0] if str(e) else ""
    warnings.warn(f"checkpoint step {step} in {self.directory} is corrupt or partial "
                  f"({type(e).__name__}: {reason}); moved it to {moved} and trying the "
                  f"previous one", CorruptCheckpointWarning, stacklevel=3)

  def _quarantine(self, step: int) -> str:
    src = os.path.join(self.directory, str(step))
    os.makedirs(self.quarantine_dir, exist_ok=True)
    dst = os.path.join(self.quarantine_dir, f"{step}-{int(time.time() * 1000)}")
    if os.path.exists(src):
      shutil.move(src, dst)
    self._manager.reload()
    return dst

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
