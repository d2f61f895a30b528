"""learned_opt.save / learned_opt.load: file layout, atomicity and foreign files.

Per-architecture round trips and incompatible files are in test_conformance.py.
"""

from __future__ import annotations

import json
import os
import pickle
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors
import safetensors.numpy

import learned_opt
from learned_opt import serialization


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  lopt = learned_opt.AdafactorMLPOptimizer(hidden_size=3, momentum_decays=(0.9,))
  mp = lopt.init(jax.random.key(0))
  path = tmp_path_factory.mktemp("ser") / "opt.safetensors"
  learned_opt.save(path, lopt, mp)
  return lopt, mp, path


def test_file_layout_is_plain_safetensors_with_json_metadata(saved):
  lopt, mp, path = saved
  data = path.read_bytes()
  (n,) = struct.unpack("<Q", data[:8])
  header = json.loads(data[8:8 + n])
  doc = json.loads(header["__metadata__"]["learned_opt"])
  assert doc["format"] == "learned_opt" and doc["format_version"] == 2
  assert doc["name"] == "adafactor_mlp"
  assert doc["config"] == lopt.config()
  assert doc["config"]["momentum_decays"] == [0.9]
  assert doc["tree"] == {"mlp": {"w1": None, "b1": None, "w2": None, "b2": None},
                         "momentum_logits": None, "factored_logits": None}
  tensors = safetensors.numpy.load_file(str(path))
  assert sorted(tensors) == ["factored_logits", "mlp/b1", "mlp/b2", "mlp/w1", "mlp/w2",
                             "momentum_logits"]
  np.testing.assert_array_equal(tensors["mlp/w1"], mp["mlp"]["w1"])


def test_load_returns_jax_arrays_and_equal_config(saved):
  lopt, mp, path = saved
  lopt2, mp2 = learned_opt.load(str(path))  # str and PathLike both accepted
  assert lopt2 == lopt and lopt2.momentum_decays == (0.9,)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(mp2))
  for a, b in zip(jax.tree.leaves(mp), jax.tree.leaves(mp2)):
    assert a.dtype == b.dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_bfloat16_and_scalar_meta_params_round_trip(tmp_path):
  lopt = learned_opt.Adam()
  mp = {"log_lr": jnp.asarray(-3.25, jnp.bfloat16)}
  learned_opt.save(tmp_path / "a.safetensors", lopt, mp)
  _, mp2 = learned_opt.load(tmp_path / "a.safetensors")
  assert mp2["log_lr"].dtype == jnp.bfloat16 and mp2["log_lr"].shape == ()
  assert float(mp2["log_lr"]) == -3.25


def test_save_is_atomic_and_replaces(saved, tmp_path, monkeypatch):
  lopt, mp, _ = saved
  path = tmp_path / "opt.safetensors"
  learned_opt.save(path, lopt, mp)
  before = path.read_bytes()

  def boom(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(serialization.os, "replace", boom)
  mp_other = jax.tree.map(lambda x: x + 1, mp)
  with pytest.raises(OSError, match="disk full"):
    learned_opt.save(path, lopt, mp_other)
  assert path.read_bytes() == before  # the old file is untouched
  assert os.listdir(tmp_path) == ["opt.safetensors"]  # no temp file left behind
  monkeypatch.undo()
  learned_opt.save(path, lopt, mp_other)
  _, loaded = learned_opt.load(path)
  np.testing.assert_array_equal(loaded["mlp"]["w1"], mp_other["mlp"]["w1"])


def test_save_rejects_meta_params_that_do_not_fit(tmp_path):
  lopt = learned_opt.AdafactorMLPOptimizer()
  mp = lopt.init(jax.random.key(0))
  with pytest.raises(ValueError, match="shape"):
    learned_opt.save(tmp_path / "x", lopt, {**mp, "momentum_logits": jnp.zeros(5)})
  with pytest.raises(ValueError, match="missing"):
    learned_opt.save(tmp_path / "x", lopt, {"mlp": mp["mlp"]})
  with pytest.raises(ValueError, match="'/'"):
    learned_opt.save(tmp_path / "x", lopt, {**mp, "a/b": jnp.zeros(1)})
  with pytest.raises(ValueError, match="nested dicts of arrays"):
    learned_opt.save(tmp_path / "x", lopt, {**mp, "mlp": [1, 2]})
  assert not os.path.exists(tmp_path / "x")


def test_save_rejects_unregistered_optimizer(tmp_path):
  class Unregistered(learned_opt.Adam):
    name = "never_registered"

  with pytest.raises(ValueError, match="not registered"):
    learned_opt.save(tmp_path / "x", Unregistered(), {"log_lr": jnp.zeros(())})


def _foreign_files(tmp_path):
  files = {
      "pickle": pickle.dumps({"log_lr": np.zeros(())}),
      "random_bytes": np.random.default_rng(0).bytes(4096),
      "json": json.dumps({"name": "adam", "config": {}}).encode(),
      "empty": b"",
      "tiny": b"\x01\x02",
      "safetensors_without_metadata": safetensors.numpy.save({"w": np.ones(3, np.float32)}),
      "safetensors_foreign_metadata": safetensors.numpy.save(
          {"w": np.ones(3, np.float32)}, metadata={"format": "pt"}),
      "metadata_not_json": safetensors.numpy.save(
          {"w": np.ones(3, np.float32)}, metadata={"learned_opt": "{not json"}),
      "header_not_json": struct.pack("<Q", 4) + b"\xff\xfe{]",
  }
  return files


@pytest.mark.parametrize("kind", sorted(_foreign_files(None)) + ["missing", "directory"])
def test_foreign_or_missing_files_raise_fileformaterror_naming_the_path(kind, tmp_path):
  path = tmp_path / f"{kind}.safetensors"
  if kind == "directory":
    path.mkdir()
  elif kind != "missing":
    path.write_bytes(_foreign_files(tmp_path)[kind])
  with pytest.raises(learned_opt.FileFormatError) as info:
    learned_opt.load(path)
  assert isinstance(info.value, ValueError)
  assert str(info.value).startswith(str(path) + ": ")


def test_loading_never_unpickles(tmp_path, monkeypatch):
  path = tmp_path / "evil.safetensors"
  path.write_bytes(pickle.dumps({"x": 1}))

  def forbidden(*args, **kwargs):
    raise AssertionError("pickle must never be used")

  monkeypatch.setattr(pickle, "loads", forbidden)
  monkeypatch.setattr(pickle, "load", forbidden)
  with pytest.raises(learned_opt.FileFormatError, match="not a safetensors file"):
    learned_opt.load(path)


def test_invalid_format_fields(saved, tmp_path):
  _, _, good = saved
  data = good.read_bytes()
  (n,) = struct.unpack("<Q", data[:8])
  header = json.loads(data[8:8 + n])
  cases = {
      "format": ("format", "declare format"),
      "format_version": ("format_version", "invalid format version"),
      "config": ("config", "'config'"),
  }
  for key, (field, message) in cases.items():
    doc = json.loads(header["__metadata__"]["learned_opt"])
    doc[field] = "wrong" if key != "format_version" else "1"
    tensors = safetensors.numpy.load_file(str(good))
    path = tmp_path / f"{key}.safetensors"
    safetensors.numpy.save_file(tensors, str(path), metadata={"learned_opt": json.dumps(doc)})
    with pytest.raises(learned_opt.FileFormatError, match=message):
      learned_opt.load(path)


def test_provenance_round_trips_and_defaults_to_empty(tmp_path):
  lopt = learned_opt.SGDMomentum()
  theta = lopt.init(jax.random.key(0))
  plain, tagged = tmp_path / "plain.safetensors", tmp_path / "tagged.safetensors"
  learned_opt.save(plain, lopt, theta)
  info = {"producer": "meta-train", "outer_step": 7, "config": {"run": {"seed": 1}}}
  learned_opt.save(tagged, lopt, theta, provenance=info)
  assert learned_opt.provenance(plain) == {}
  assert learned_opt.provenance(tagged) == info
  with pytest.raises(ValueError, match="JSON"):
    learned_opt.save(plain, lopt, theta, provenance={"bad": object()})
