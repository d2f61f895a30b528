"""Reading a learned-optimizer file (format v2, and v1) with numpy and safetensors only, no JAX.

A file is a safetensors file: the meta-parameters are its tensors, keyed by the ``/``-joined
path of each array in the nested-dict pytree, and one metadata entry (safetensors' ``str -> str``
header metadata) holds a JSON document::

  {"format": "learned_opt", "format_version": 2, "name": <architecture name>,
   "config": <its config dict>, "tree": <nested dicts, null at each array>,
   "provenance": <optional dict: how the file was made>}

:mod:`learned_opt.serialization` writes files and rebuilds the JAX optimizer from them;
:mod:`learned_opt.torch` applies them in PyTorch. Both read through the functions here, so a file
is parsed and validated one way. Anything wrong raises :class:`FileFormatError` (a
``ValueError``) whose message starts with the file's path. Only arrays and JSON are read: no
code runs, whatever the file holds.

Version 2 saves only what changes the updates (a learned schedule is a part of a ``"chain"``;
how meta-training started lives in the provenance). Version-1 files are still read:
:func:`read` upgrades them (:func:`learned_opt.upgrade.upgrade_v1`).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np
import safetensors

from learned_opt import upgrade

FORMAT_NAME = "learned_opt"
FORMAT_VERSION = 2
METADATA_KEY = "learned_opt"
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit

# safetensors dtype tags -> numpy dtypes (bfloat16 through ml_dtypes).
DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


class FileFormatError(ValueError):
  """A learned-optimizer file is missing, truncated, foreign or incompatible."""


def read_bytes(path: str) -> bytes:
  """The whole file; :class:`FileFormatError` if it is missing or unreadable."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise FileFormatError(f"{path}: no such file") from None
  except OSError as e:
    raise FileFormatError(f"{path}: cannot read ({e.strerror or e})") from None


def read_header(path: str, data: bytes) -> dict[str, Any]:
  """The safetensors JSON header of ``data``, checked against the file's length."""
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


def parse_document(path: str, header: dict[str, Any]) -> dict[str, Any]:
  """The learned_opt JSON document of a header, its format fields checked."""
  def fail(msg):
    return FileFormatError(f"{path}: {msg}")

  metadata = header.get("__metadata__") or {}
  if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
    raise fail(f"a safetensors file without {FORMAT_NAME} metadata (not saved by "
               "learned_opt.save)")
  try:
    doc = json.loads(metadata[METADATA_KEY])
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


def read_document(path: str | os.PathLike) -> tuple[bytes, dict[str, Any]]:
  """Reads a file and its JSON document; returns ``(data, document)``.

  Raises:
    FileFormatError: if the file is missing, truncated, not a learned-optimizer file or of a
      newer format version.
  """
  path = os.fspath(path)
  data = read_bytes(path)
  return data, parse_document(path, read_header(path, data))


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


def read_meta_params(path: str | os.PathLike, data: bytes, doc: dict[str, Any]) -> Any:
  """The meta-parameters of a file as nested dicts of numpy arrays (``doc["tree"]``'s shape).

  Args:
    path: the file (for messages).
    data: its bytes, from :func:`read_document`.
    doc: its document, from :func:`read_document`.

  Returns:
    Nested dicts of read-only numpy arrays, bit-identical to what was saved.

  Raises:
    FileFormatError: for corrupt tensor data, an unsupported dtype, a tensor the tree names
      but the file lacks, or a tensor the tree does not name.
  """
  path = os.fspath(path)

  def fail(msg):
    return FileFormatError(f"{path}: {msg}")

  try:
    views = safetensors.deserialize(data)
  except Exception as e:  # safetensors raises its own SafetensorError type
    raise fail(f"corrupt safetensors data ({e})") from None
  tensors = {}
  for key, view in views:
    if view["dtype"] not in DTYPES:
      raise fail(f"tensor {key!r} has unsupported dtype {view['dtype']}")
    array = np.frombuffer(bytes(view["data"]), dtype=DTYPES[view["dtype"]])
    tensors[key] = array.reshape(view["shape"])
  used: set[str] = set()
  try:
    tree = _unflatten(doc["tree"], tensors, "", used)
  except ValueError as e:
    raise fail(str(e)) from None
  extra = sorted(set(tensors) - used)
  if extra:
    raise fail(f"unexpected tensors not in the metadata tree: {extra}")
  return tree


def provenance(path: str | os.PathLike, doc: dict[str, Any]) -> dict[str, Any]:
  """The document's ``provenance`` dict (``{}`` when the file has none)."""
  value = doc.get("provenance", {})
  if not isinstance(value, dict):
    raise FileFormatError(f"{os.fspath(path)}: metadata field 'provenance' is not an object")
  return value


class Contents(NamedTuple):
  """A learned-optimizer file, read and upgraded to the current format (:func:`read`)."""

  name: str  # the architecture name
  config: dict[str, Any]  # its config
  meta_params: Any  # nested dicts of read-only numpy arrays
  provenance: dict[str, Any]  # how the file was made ({} when it does not say)


def read(path: str | os.PathLike) -> Contents:
  """Reads a file once: its architecture, config, meta-parameters and provenance.

  A version-1 file comes back as the version-2 equivalent (same updates, bit for bit;
  :func:`learned_opt.upgrade.upgrade_v1`).

  Raises:
    FileFormatError: as :func:`read_document` and :func:`read_meta_params`.
  """
  path = os.fspath(path)
  data, doc = read_document(path)
  meta = read_meta_params(path, data, doc)
  prov = provenance(path, doc)
  name, config = doc["name"], doc["config"]
  if doc["format_version"] == 1:
    name, config, meta = upgrade.upgrade_v1(name, config, meta, prov)
  return Contents(name, config, meta, prov)
