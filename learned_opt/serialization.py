"""Saving and loading learned optimizers as single safetensors files (no pickle, no code).

A file holds the meta-parameters as safetensors tensors, keyed by the ``/``-joined path of each
array in the nested-dict pytree, and one metadata entry (safetensors' ``str -> str`` header
metadata) with a JSON document::

  {"format": "learned_opt", "format_version": 1, "name": <lopt.name>,
   "config": <lopt.config()>, "tree": <nested dicts, null at each array>}

Loading rebuilds the optimizer with ``registry()[name].from_config(config)`` and checks the
tensors against the structure and shapes of ``lopt.init``. Anything wrong with a file raises
:class:`FileFormatError` (a ``ValueError``) whose message starts with the file's path.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from learned_opt import base

FORMAT_NAME = "learned_opt"
FORMAT_VERSION = 1
_METADATA_KEY = "learned_opt"
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit

# safetensors dtype tags -> numpy dtypes (bfloat16 through ml_dtypes, which jax provides).
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


class FileFormatError(ValueError):
  """A learned-optimizer file is missing, truncated, foreign or incompatible."""


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


def _unflatten(structure: Any, tensors: dict[str, np.ndarray], prefix: str, used: set[str]):
  if isinstance(structure, dict):
    return {k: _unflatten(v, tensors, f"{prefix}/{k}" if prefix else k, used)
            for k, v in structure.items()}
  if structure is not None:
    raise ValueError(f"bad tree entry at {prefix!r}: {structure!r}")
  if prefix not in tensors:
    raise ValueError(f"tensor {prefix!r} is missing")
  used.add(prefix)
  return tensors[prefix]


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
  data = safetensors.numpy.save(tensors, metadata={_METADATA_KEY: json.dumps(document)})
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


def _read_header(path: str, data: bytes) -> dict[str, Any]:
  def fail(msg):
    return FileFormatError(f"{path}: {msg}")

  if len(data) < 8:
    raise fail(f"not a safetensors file (only {len(data)} bytes)")
  (n,) = struct.unpack("<Q", data[:8])
  if n > _MAX_HEADER_BYTES or n < 2:
    raise fail("not a safetensors file (no valid header length; is it a pickle, JSON or "
               "other file?)")
  if 8 + n > len(data):
    raise fail(f"truncated: the header needs {n} bytes but only {len(data) - 8} follow")
  try:
    header = json.loads(data[8:8 + n].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise fail(f"not a safetensors file (header is not JSON: {e})") from None
  if not isinstance(header, dict):
    raise fail("not a safetensors file (header is not a JSON object)")
  body = len(data) - 8 - n
  for key, info in header.items():
    if key == "__metadata__":
      continue
    try:
      end = int(info["data_offsets"][1])
    except (TypeError, KeyError, IndexError, ValueError):
      raise fail(f"corrupt safetensors header entry for tensor {key!r}") from None
    if end > body:
      raise fail(f"truncated: tensor {key!r} needs {end} data bytes but the file holds {body}")
  return header


def _parse_document(path: str, header: dict[str, Any]) -> dict[str, Any]:
  def fail(msg):
    return FileFormatError(f"{path}: {msg}")

  metadata = header.get("__metadata__") or {}
  if not isinstance(metadata, dict) or _METADATA_KEY not in metadata:
    raise fail(f"a safetensors file without {FORMAT_NAME} metadata (not saved by "
               "learned_opt.save)")
  try:
    doc = json.loads(metadata[_METADATA_KEY])
  except (TypeError, json.JSONDecodeError) as e:
    raise fail(f"{FORMAT_NAME} metadata is not valid JSON ({e})") from None
  if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
    raise fail(f"metadata does not declare format {FORMAT_NAME!r}")
  version = doc.get("format_version")
  if not isinstance(version, int) or isinstance(version, bool) or version < 1:
    raise fail(f"invalid format version {version!r}")
  if version > FORMAT_VERSION:
    raise fail(f"format version {version} is newer than this learned_opt supports "
               f"({FORMAT_VERSION}); upgrade learned_opt")
  for key, kind in (("name", str), ("config", dict), ("tree", dict)):
    if not isinstance(doc.get(key), kind):
      raise fail(f"metadata field {key!r} is missing or not a {kind.__name__}")
  return doc


def load(path: str | os.PathLike) -> tuple[base.LearnedOptimizer, Any]:
  """Reads a file written by :func:`save`; returns ``(lopt, meta_params)``.

  Only arrays and JSON are read: no code runs, whatever the file holds.

  Args:
    path: a ``.safetensors`` file written by :func:`save`.

  Returns:
    The rebuilt learned optimizer and its meta-parameters (nested dicts of ``jax.Array``),
    bit-identical to what was saved.

  Raises:
    FileFormatError: (a ``ValueError``) if the file is missing, truncated, not a learned-optimizer
      file, of a newer format version, of an unknown architecture, with a config the
      architecture does not accept, or with tensors that do not match the architecture. The
      message starts with the path.
  """
  path = os.fspath(path)

  def fail(msg):
    return FileFormatError(f"{path}: {msg}")

  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise fail("no such file") from None
  except OSError as e:
    raise fail(f"cannot read ({e.strerror or e})") from None
  header = _read_header(path, data)
  doc = _parse_document(path, header)
  known = base.registry()
  if doc["name"] not in known:
    raise fail(f"unknown architecture {doc['name']!r}; registered: {sorted(known)} (import the "
               "module that defines it before loading)")
  try:
    lopt = known[doc["name"]].from_config(doc["config"])
  except (TypeError, ValueError) as e:
    raise fail(f"config not accepted by {doc['name']}: {e}") from None
  try:
    views = safetensors.deserialize(data)
  except Exception as e:  # safetensors raises its own SafetensorError type
    raise fail(f"corrupt safetensors data ({e})") from None
  tensors = {}
  for key, view in views:
    if view["dtype"] not in _DTYPES:
      raise fail(f"tensor {key!r} has unsupported dtype {view['dtype']}")
    array = np.frombuffer(bytes(view["data"]), dtype=_DTYPES[view["dtype"]])
    tensors[key] = array.reshape(view["shape"])
  used: set[str] = set()
  try:
    meta_np = _unflatten(doc["tree"], tensors, "", used)
  except ValueError as e:
    raise fail(str(e)) from None
  extra = sorted(set(tensors) - used)
  if extra:
    raise fail(f"unexpected tensors not in the metadata tree: {extra}")
  meta_params = jax.tree.map(jnp.asarray, meta_np)
  problem = _shape_mismatches(lopt, meta_params)
  if problem:
    raise fail(f"tensors do not match {doc['name']} with this config: {problem}")
  return lopt, meta_params


def provenance(path: str | os.PathLike) -> dict[str, Any]:
  """The ``provenance`` dict :func:`save` stored in the file (``{}`` when none was given).

  Raises:
    FileFormatError: if the file is not a valid learned-optimizer file.
  """
  path = os.fspath(path)
  load(path)  # full validation first
  with open(path, "rb") as f:
    data = f.read()
  doc = _parse_document(path, _read_header(path, data))
  value = doc.get("provenance", {})
  if not isinstance(value, dict):
    raise FileFormatError(f"{path}: metadata field 'provenance' is not an object")
  return value
