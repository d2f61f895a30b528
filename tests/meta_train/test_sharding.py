"""Particles sharded over devices: mesh, sharding rule, config checks, and 8 forced CPU devices.

The 8-device test runs in a subprocess because ``--xla_force_host_platform_device_count`` must
be in ``XLA_FLAGS`` before jax is imported.
"""

import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

import learned_opt
from meta_train import config as config_lib
from meta_train.estimators.registry import make_estimator
from meta_train.runtime import run as run_lib
from meta_train.runtime import sharding
from meta_train.trainer import MetaTrainer
import tasks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_mesh_has_one_auto_particle_axis_over_all_devices_by_default():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ("particles",)
  assert mesh.axis_types == (AxisType.Auto,)
  assert mesh.size == jax.device_count()


@pytest.mark.parametrize("bad", [0, -1, jax.device_count() + 1, 1.5, True])
def test_mesh_rejects_device_counts_outside_the_available_range(bad):
  with pytest.raises(ValueError, match=rf"num_devices must be an int in \[1, "
                                       rf"{jax.device_count()}\].*got {bad!r}"):
    sharding.make_mesh(bad)


def _estimator(name, size, truncation_length=2, horizon=4):
  """``name`` with ``size`` pairs (antithetic) or particles (tbptt) on a 3-d quadratic."""
  unit = "num_particles" if name == "tbptt" else "num_pairs"
  truncation = {} if name == "full_es" else {"truncation_length": truncation_length}
  return make_estimator(name, learned_opt.SGDMomentum(), tasks.QuadraticFamily(dim=3),
                        min_horizon=horizon, max_horizon=horizon, **truncation, **{unit: size})


@pytest.mark.parametrize("name,counts", [("pes", (4, 8)), ("es", (4, 8)), ("full_es", (4, 8)),
                                         ("tbptt", (4,))])
def test_particle_counts_are_pairs_and_members_for_antithetic_estimators(name, counts):
  est = _estimator(name, 4, truncation_length=5, horizon=10)
  assert sharding.particle_counts(est) == counts
  assert sharding.sharding_unit(est) == 4


def test_pes_state_rule_splits_particles_and_accumulator_and_replicates_the_rest():
  trainer = MetaTrainer(_estimator("pes", 2))
  abstract = jax.eval_shape(trainer.init, jax.random.key(0))
  shards = sharding.state_shardings(abstract, sharding.make_mesh(1), (2, 4))
  flat_state = jax.tree_util.tree_flatten_with_path(abstract)[0]
  flat_shards = jax.tree.leaves(shards, is_leaf=lambda x: hasattr(x, "spec"))
  assert len(flat_state) == len(flat_shards)
  split = PartitionSpec("particles")
  for (path, leaf), s in zip(flat_state, flat_shards):
    name = jax.tree_util.keystr(path)
    in_estimator = name.startswith(".estimator_state")
    expect = split if in_estimator and leaf.ndim and leaf.shape[0] in (2, 4) else PartitionSpec()
    assert s.spec == expect, name
  # Every particle leaf (2 * pairs rows) and every accumulator leaf (pairs rows) is split.
  est = jax.tree.leaves(shards.estimator_state, is_leaf=lambda x: hasattr(x, "spec"))
  assert est and all(s.spec == split for s in est)


def test_trainer_refuses_pairs_that_do_not_divide_over_its_mesh():
  mesh = types.SimpleNamespace(size=2)  # checked before the mesh is used for anything else
  with pytest.raises(ValueError, match=r"PES: 3 pairs do not split evenly over 2 devices"):
    MetaTrainer(_estimator("pes", 3), mesh=mesh)


@pytest.mark.parametrize("name,field,size,devices,message", [
    ("pes", "num_pairs", 6, 4, "6 pairs do not split evenly over 4 devices: use a multiple of "
                               "4 pairs, or set run.num_devices to a divisor of 6"),
    ("full_es", "num_pairs", 3, 2, "3 pairs do not split evenly over 2 devices: use a multiple "
                                   "of 2 pairs, or set run.num_devices to a divisor of 3"),
    ("tbptt", "num_particles", 6, 4, "6 particles do not split evenly over 4 devices: use a "
                                     "multiple of 4 particles, or set run.num_devices to a "
                                     "divisor of 6"),
])
def test_config_names_the_sharded_field_when_it_does_not_divide(name, field, size, devices,
                                                                message):
  overrides = [f"estimator.name={name}", f"estimator.{field}={size}",
               f"run.num_devices={devices}"]
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.resolve("smoke", overrides)
  assert e.value.path == f"estimator.{field}"
  assert str(e.value) == f"estimator.{field}: {message}"


def test_only_the_sharded_field_must_divide():
  # pes shards pairs: 6 pairs split over 3 devices; num_particles (8, unused) would not.
  cfg = config_lib.resolve("smoke", ["estimator.num_pairs=6", "run.num_devices=3"])
  assert (cfg.estimator.num_pairs, cfg.estimator.num_particles, cfg.run.num_devices) == (6, 8, 3)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check_devices(cfg, 4)
  assert str(e.value).startswith("estimator.num_pairs: 6 pairs do not split evenly over 4 ")
  # tbptt shards particles: 6 particles split over 3 devices; num_pairs (8, unused) would not.
  cfg = config_lib.resolve("smoke", ["estimator.name=tbptt", "estimator.num_particles=6",
                                     "run.num_devices=3"])
  assert (cfg.estimator.num_particles, cfg.estimator.num_pairs) == (6, 8)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check_devices(cfg, 4)
  assert str(e.value).startswith("estimator.num_particles: 6 particles do not split evenly ")


def test_num_devices_may_change_on_resume_and_must_be_positive():
  a = config_lib.resolve("smoke", ["estimator.num_pairs=8", "run.num_devices=8"])
  b = config_lib.resolve("smoke", ["estimator.num_pairs=8", "run.num_devices=2"])
  assert config_lib.incompatible_fields(a, b) == []
  with pytest.raises(config_lib.ConfigError, match=r"^run.num_devices: must be > 0, got 0$"):
    config_lib.resolve("smoke", ["run.num_devices=0"])


# The 8-device script: three runs of the smoke preset with 8 antithetic pairs (1 device, 8
# devices, and the 8-device run's step-10 checkpoint resumed on 4 devices), then config errors.
_SCRIPT = r"""
import io, json, os, shutil, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax
from meta_train import config as config_lib
from meta_train.runtime import run as run_lib
assert jax.device_count() == 8, jax.devices()
root = sys.argv[1]
base = ["estimator.num_pairs=8", "run.progress=off", "wandb.mode=disabled"]
def go(name, extra):
  out = io.StringIO()
  run_lib.run(config_lib.resolve("smoke", base + extra), os.path.join(root, name), stdout=out)
  return out.getvalue()
res = {"one": go("one", ["run.num_devices=1"]), "eight": go("eight", [])}
shutil.copytree(os.path.join(root, "eight"), os.path.join(root, "four"))
shutil.rmtree(os.path.join(root, "four", "checkpoints", "20"))
os.remove(os.path.join(root, "four", "optimizer.safetensors"))
res["four"] = go("four", ["run.num_devices=4"])
errors = {}
for name, extra in {"pairs": ["estimator.num_pairs=6"],
                    "too_many": ["estimator.num_pairs=16", "run.num_devices=16"]}.items():
  try:
    go("bad_" + name, extra)
  except config_lib.ConfigError as e:
    errors[name] = [e.path, str(e), os.path.exists(os.path.join(root, "bad_" + name))]
res["errors"] = errors
# Per-device work of one compiled step (tiny problem): the particles are really split.
import learned_opt, tasks
from meta_train.estimators.registry import make_estimator
from meta_train.runtime import sharding
from meta_train.trainer import MetaTrainer
flops = {}
for name in ("pes", "full_es", "tbptt"):
  unit = {"tbptt": {"num_particles": 16}}.get(name, {"num_pairs": 8})
  for n in (1, 8):
    mesh = sharding.make_mesh(n)
    truncation = {} if name == "full_es" else {"truncation_length": 2}
    est = make_estimator(name, learned_opt.SGDMomentum(), tasks.QuadraticFamily(dim=3),
                         min_horizon=4, max_horizon=4, **truncation, **unit)
    tr = MetaTrainer(est, mesh=mesh)
    state = tr.init(jax.random.key(0))
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.estimator_state) if x.ndim}
    step = jax.jit(tr._step_impl, in_shardings=(tr.shardings,),
                   out_shardings=(tr.shardings, sharding.replicated(mesh)))
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      cost = step.lower(state).compile().cost_analysis()
    flops[f"{name}/{n}"] = [(cost[0] if isinstance(cost, list) else cost)["flops"], sorted(specs)]
res["flops"] = flops
print("RESULT " + json.dumps(res))
"""


def _load(path):
  _, theta = learned_opt.load(path)
  return jax.tree.map(np.asarray, theta)


def _assert_close(a, b):
  """Equal up to float32 reduction order (see test_8_devices_... for why not bit-exact)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(x))))


def test_8_forced_cpu_devices_match_1_device_and_resume_on_4(tmp_path):
  """8 pairs over 8 devices give 1 device's meta-parameters to ``rtol=1e-4``.

  Not bit-exact: on 8 devices the mean over pairs is an all-reduce of per-device partial sums
  (another float32 summation order than one device's), and XLA compiles the per-device ``vmap``
  for 1 pair instead of 8, so losses can differ in the last ulp. ES divides loss differences by
  ``2σ² = 2e-4``, which magnifies those ulps, and 20 Adam steps carry them along; measured
  differences are ~4e-6 relative, far below how far θ moves (checked below).
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", WANDB_MODE="disabled",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  res = json.loads(out.stdout.split("RESULT ", 1)[1])
  assert "on 1 device (cpu) in 1 process" in res["one"]
  assert "on 8 devices (cpu) in 1 process" in res["eight"]
  assert ("from checkpoint step 10 on 4 devices (checkpoint written on 8)" in res["four"])

  one = _load(tmp_path / "one" / "optimizer.safetensors")
  eight = _load(tmp_path / "eight" / "optimizer.safetensors")
  four = _load(tmp_path / "four" / "optimizer.safetensors")
  _assert_close(one, eight)
  _assert_close(one, four)
  # The tolerance is far below how far meta-training moved θ, so the comparison has teeth.
  cfg = config_lib.resolve("smoke", ["estimator.num_pairs=8"])
  trainer, _, _ = run_lib.build_trainer(cfg)
  theta0 = jax.device_get(trainer.init(jax.random.key(cfg.run.seed)).meta_params)
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(one),
                                                         jax.tree.leaves(theta0)))
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(one),
                                                        jax.tree.leaves(eight)))
  assert moved > 1000 * diff

  # Each of 8 devices does a fraction of one device's work (fresh full-ES runs are sampled
  # replicated, hence not a full 1/8), and the state is laid out by the sharding rule.
  flops = res["flops"]
  for name, most in (("pes", 0.2), ("full_es", 0.5), ("tbptt", 0.3)):
    assert flops[f"{name}/8"][0] < most * flops[f"{name}/1"][0], (name, flops)
  assert flops["pes/8"][1] == flops["tbptt/8"][1] == ["P('particles',)"]

  errors = res["errors"]
  assert errors["pairs"][0] == "estimator.num_pairs"
  assert "6 pairs do not split evenly over 8 devices" in errors["pairs"][1]
  assert errors["too_many"][0] == "run.num_devices"
  assert "num_devices must be an int in [1, 8] (the devices available), got 16" in errors[
      "too_many"][1]
  assert not errors["pairs"][2] and not errors["too_many"][2]  # refused before any file
