"""Saving and loading learned optimizers as single safetensors files (no pickle, no code).

A file holds the meta-parameters as safetensors tensors, keyed by the ``/``-joined path of each
array in the nested-dict pytree, and one metadata entry (safetensors' ``str -> str`` header
metadata) with a JSON document::

  {"format": "learned_opt", "format_version": 2, "name": <lopt.name>,
   "config": <lopt.config()>, "tree": <nested dicts, null at each array>}

Loading rebuilds the optimizer with ``registry()[name].from_config(config)`` and checks the
tensors against the structure and shapes of ``lopt.init``. Anything wrong with a file raises
:class:`FileFormatError` (a ``ValueError``) whose message starts with the file's path.
Reading the file itself (header, document, tensors) is :mod:`learned_opt.file_format`, which
needs no JAX and which :mod:`learned_opt.torch` uses too.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from learned_opt import base
from learned_opt import file_format
from learned_opt.file_format import FORMAT_NAME, FORMAT_VERSION, FileFormatError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "FileFormatError", "load", "provenance", "read",
           "save"]


def _flatten(tree: Any, prefix: str, out: dict[str, np.ndarray]) -> Any:
  """Flattens nested dicts of arrays into ``out``; returns the JSON structure (None at arrays)."""
  if isinstance(tree, dict):
    structure = {}
    for key, value in tree.items():
      if not isinstance(key, str) or not key or "/" in key:
        raise ValueError(f"meta_params keys must be non-empty strings without '/', got {key!r}"
                         f" under {prefix or 'the root'!r}")
      structure[key] = _flatten(value, f"{prefix}/{key}" if prefix else key, out)
    return structure
  if tree is None or not hasattr(tree, "shape"):
    raise ValueError(f"meta_params must be nested dicts of arrays; {prefix or 'the root'!r} is "
                     f"{type(tree).__name__}")
  if not prefix:
    raise ValueError("meta_params must be a dict of arrays, not a bare array")
  out[prefix] = np.array(jax.device_get(tree), order="C", copy=True)
  return None


def _shape_mismatches(lopt: base.LearnedOptimizer, meta_params: Any) -> str | None:
  """Compares ``meta_params`` with ``lopt.init``'s structure and shapes; None when they agree."""
  expected = jax.eval_shape(lopt.init, jax.random.key(0))
  exp_paths = {jax.tree_util.keystr(k): v for k, v in
               jax.tree_util.tree_flatten_with_path(expected)[0]}
  got_paths = {jax.tree_util.keystr(k): v for k, v in
               jax.tree_util.tree_flatten_with_path(meta_params)[0]}
  missing = sorted(set(exp_paths) - set(got_paths))
  extra = sorted(set(got_paths) - set(exp_paths))
  if missing or extra:
    return f"tensors missing: {missing}; unexpected tensors: {extra}"
  if jax.tree.structure(expected) != jax.tree.structure(meta_params):
    return "tree structure differs from the optimizer's init"
  wrong = [f"{k}: {tuple(got_paths[k].shape)} (expected {tuple(v.shape)})"
           for k, v in exp_paths.items() if tuple(got_paths[k].shape) != tuple(v.shape)]
  if wrong:
    return "shape mismatch: " + "; ".join(wrong)
  return None


def save(path: str | os.PathLike, lopt: base.LearnedOptimizer, meta_params: Any, *,
         provenance: dict[str, Any] | None = None) -> None:
  """Writes ``lopt`` and its meta-parameters to one safetensors file, atomically.

  Args:
    path: destination file (conventionally ``*.safetensors``); replaced if it exists.
    lopt: a registered learned optimizer (its ``name`` and ``config()`` go in the metadata).
    meta_params: nested dicts of arrays matching ``lopt.init``'s structure and shapes.
    provenance: optional JSON-serialisable description of how the file was made (e.g. the
      ``meta-train`` preset, resolved config and outer step); read back by :func:`provenance`.

  Raises:
    ValueError: if ``lopt`` is not registered or ``meta_params`` do not fit it.

  Example::

    learned_opt.save("opt.safetensors", lopt, meta_params)
    lopt2, meta_params2 = learned_opt.load("opt.safetensors")
  """
  path = os.fspath(path)
  if base.registry().get(lopt.name) is not type(lopt):
    raise ValueError(f"{type(lopt).__name__} is not registered under {lopt.name!r}; "
                     "decorate it with @learned_opt.register so that load() can rebuild it")
  tensors: dict[str, np.ndarray] = {}
  structure = _flatten(meta_params, "", tensors)
  problem = _shape_mismatches(lopt, meta_params)
  if problem:
    raise ValueError(f"meta_params do not fit {lopt.name}: {problem}")
  document = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "name": lopt.name,
              "config": lopt.config(), "tree": structure}
  if provenance is not None:
    try:
      json.dumps(provenance, allow_nan=False)
    except (TypeError, ValueError) as e:
      raise ValueError(f"provenance must be JSON-serialisable: {e}") from None
    document["provenance"] = provenance
  data = safetensors.numpy.save(tensors,
                              metadata={file_format.METADATA_KEY: json.dumps(document)})
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read(path: str | os.PathLike) -> tuple[base.LearnedOptimizer, Any, dict[str, Any]]:
  """Reads a file written by :func:`save` once; returns ``(lopt, meta_params, provenance)``.

  A format-v1 file is upgraded on the way (:func:`learned_opt.upgrade.upgrade_v1`): it gives
  the same updates as with the code that wrote it. Only arrays and JSON are read: no code
  runs, whatever the file holds.

  Args:
    path: a ``.safetensors`` file written by :func:`save`.

  Returns:
    The rebuilt learned optimizer, its meta-parameters (nested dicts of ``jax.Array``,
    bit-identical to what was saved) and the provenance dict (``{}`` when none was saved).

  Raises:
    FileFormatError: (a ``ValueError``) if the file is missing, truncated, not a learned-optimizer
      file, of a newer format version, of an unknown architecture, with a config the
      architecture does not accept, or with tensors that do not match the architecture. The
      message starts with the path.
  """
  path = os.fspath(path)

  def fail(msg):
    return FileFormatError(f"{path}: {msg}")

  contents = file_format.read(path)
  known = base.registry()
  if contents.name not in known:
    raise fail(f"unknown architecture {contents.name!r}; registered: {sorted(known)} (import "
               "the module that defines it before loading)")
  try:
    lopt = known[contents.name].from_config(contents.config)
  except (TypeError, ValueError) as e:
    raise fail(f"config not accepted by {contents.name}: {e}") from None
  meta_params = jax.tree.map(jnp.asarray, contents.meta_params)
  problem = _shape_mismatches(lopt, meta_params)
  if problem:
    raise fail(f"tensors do not match {contents.name} with this config: {problem}")
  return lopt, meta_params, contents.provenance


def load(path: str | os.PathLike) -> tuple[base.LearnedOptimizer, Any]:
  """Reads a file written by :func:`save`; returns ``(lopt, meta_params)`` (:func:`read`).

  Example::

    lopt, meta_params = learned_opt.load("opt.safetensors")
    tx = lopt.transform(meta_params)
  """
  lopt, meta_params, _ = read(path)
  return lopt, meta_params


def provenance(path: str | os.PathLike) -> dict[str, Any]:
  """The ``provenance`` dict :func:`save` stored in the file (``{}`` when none was given).

  Raises:
    FileFormatError: if the file is not a valid learned-optimizer file.
  """
  return read(path)[2]
