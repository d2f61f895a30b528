"""Checkpoints and resume: SIGKILL mid-run + resume is bit-identical; corrupt steps are skipped."""

import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from meta_train import config as config_lib
from meta_train.runtime import checkpoint as ckpt_lib
from meta_train.runtime import run as run_lib
from meta_train.runtime.metrics_log import MetricsFile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A tiny run: SGD-momentum's learnable log-lr on 2-d quadratics, PES with one pair.
TINY = ["optimizer.name=sgd_momentum", "task.kwargs.dim=2", "estimator.name=pes",
        "estimator.num_pairs=1", "estimator.truncation_length=2", "estimator.min_horizon=6",
        "estimator.max_horizon=6",
        "run.num_outer_steps=120", "run.steps_per_dispatch=2", "run.checkpoint_every=10",
        "run.log_every=10", "run.max_to_keep=3", "run.progress=off"]


def _env(cache_dir):
  env = dict(os.environ)
  env.update(WANDB_SILENT="true", WANDB_MODE="disabled", JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
  return env


def _cmd(run_dir):
  return [sys.executable, "-m", "meta_train.cli", "--preset", "smoke", "--run-dir",
          str(run_dir), "--wandb", "disabled", *TINY]


def _finished_steps(run_dir):
  d = os.path.join(run_dir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _runs(root):
  """An uninterrupted run and a run SIGKILLed after its first checkpoint, then resumed."""
  env = _env(root / "jax_cache")
  full, killed = root / "full", root / "killed"
  out = subprocess.run(_cmd(full), env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]

  proc = subprocess.Popen(_cmd(killed), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 240
  while not _finished_steps(killed) and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.005)
  os.kill(proc.pid, signal.SIGKILL)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL, f"run ended before the kill: {err[-3000:]}"
  steps_at_kill = _finished_steps(killed)
  assert steps_at_kill and steps_at_kill[-1] < 120

  resumed = subprocess.run(_cmd(killed), env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=300, check=False)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  return {"full": full, "killed": killed, "steps_at_kill": steps_at_kill,
          "resumed_stdout": resumed.stdout}


# One test (not several sharing a fixture): pytest-xdist would run a module fixture once per
# worker, and the three subprocess runs are the expensive part.
def test_sigkill_resume_is_bit_identical_and_corrupt_latest_checkpoint_is_skipped(tmp_path):
  runs = _runs(tmp_path)
  _check_bit_identical(runs)
  _check_metrics_file(runs)
  _check_corrupt_fallback(runs, tmp_path)


def _check_bit_identical(runs):
  out = runs["resumed_stdout"]
  assert "resumed" in out and "from checkpoint step" in out
  resumed_from = int(out.split("from checkpoint step ")[1].split()[0])
  assert 0 < resumed_from < 120
  # load_final_state rebuilds the trainer from the run directory's config.json.
  step_a, state_a = run_lib.load_final_state(runs["full"])
  step_b, state_b = run_lib.load_final_state(runs["killed"])
  assert step_a == step_b == 120
  assert int(state_a.step) == 120
  chex.assert_trees_all_equal(state_a, state_b, strict=True)
  # The meta-parameters moved, so equality is not trivial.
  log_lr0 = np.log(learned_opt.SGDMomentum().initial_learning_rate).astype(np.float32)
  assert float(state_a.meta_params["log_lr"]) != log_lr0
  # The exported optimizer files hold the same final meta-parameters.
  _, theta_a = learned_opt.load(os.path.join(runs["full"], "optimizer.safetensors"))
  _, theta_b = learned_opt.load(os.path.join(runs["killed"], "optimizer.safetensors"))
  chex.assert_trees_all_equal(theta_a, theta_b, jax.device_get(state_a.meta_params),
                              strict=True)
  # Their provenance names the command that wrote them (the resumed run's, the same here).
  info = learned_opt.provenance(os.path.join(runs["killed"], "optimizer.safetensors"))
  assert info["command"] == shlex.join(["meta-train", *_cmd(runs["killed"])[3:]])


def _check_metrics_file(runs):
  full = MetricsFile.read(os.path.join(runs["full"], "metrics.jsonl"))
  killed = MetricsFile.read(os.path.join(runs["killed"], "metrics.jsonl"))
  assert [r["step"] for r in full] == list(range(10, 121, 10))
  assert [r["step"] for r in killed] == [r["step"] for r in full]  # no duplicates, no gaps
  for a, b in zip(full, killed):  # the logged values are reproduced too
    for key in ("meta_loss", "grad_norm", "inner_steps", "nonfinite"):
      assert a[key] == b[key], (a["step"], key)
  with open(os.path.join(runs["killed"], "config.json"), encoding="utf-8") as f:
    assert config_lib.from_json(f.read()) == config_lib.resolve(
        "smoke", TINY + ["wandb.mode=disabled"])


def _check_corrupt_fallback(runs, tmp_path):
  run_dir = tmp_path / "copy"
  subprocess.run(["cp", "-r", str(runs["full"]), str(run_dir)], check=True)
  steps = _finished_steps(run_dir)
  assert steps == [100, 110, 120]
  data_files = [f for f in glob.glob(str(run_dir / "checkpoints" / "120" / "state" / "**"),
                                     recursive=True) if os.path.isfile(f) and "/d/" in f]
  for f in data_files:
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)
  with pytest.warns(ckpt_lib.CorruptCheckpointWarning, match="step 120"):
    step, state = run_lib.load_final_state(run_dir)
  assert step == 110 and int(state.step) == 110
  assert _finished_steps(run_dir) == [100, 110]
  assert os.listdir(run_dir / "corrupt_checkpoints")[0].startswith("120-")


# ------------------------------------------------------------------------------------------
# Checkpointer unit tests on a hand-made state (no compilation of a trainer).


def _state(i):
  params = {"w": jnp.arange(6.0).reshape(2, 3) + i, "b": {"c": jnp.full((2,), float(i))}}
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  return {"meta_params": params, "outer_opt_state": opt.init(params),
          "estimator_state": {"empty": jnp.zeros((0, 3)), "acc": jnp.ones((2,), jnp.uint32) * i},
          "step": jnp.int32(i), "key": jax.random.key_data(jax.random.key(i))}


def _save_steps(directory, steps):
  ckpt = ckpt_lib.Checkpointer(directory, max_to_keep=5)
  for i in steps:
    ckpt.save(i, _state(i))
  ckpt.close()


def _corrupt(step_dir, how):
  files = sorted(f for f in glob.glob(os.path.join(step_dir, "**"), recursive=True)
                 if os.path.isfile(f))
  if how == "delete_state_metadata":
    os.remove(os.path.join(step_dir, "state", "_METADATA"))
  elif how == "delete_data":
    for f in (f for f in files if "/d/" in f):
      os.remove(f)
  elif how == "delete_manifest":
    os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))
  elif how == "delete_meta":
    os.remove(os.path.join(step_dir, "meta", "metadata"))
  elif how == "truncate_data":
    for f in (f for f in files if "/d/" in f):
      with open(f, "r+b") as fh:
        fh.truncate(1)
  elif how == "digest":
    path = os.path.join(step_dir, "meta", "metadata")
    with open(path, encoding="utf-8") as fh:
      meta = json.load(fh)
    meta["digest"] = "0" * 64
    with open(path, "w", encoding="utf-8") as fh:
      json.dump(meta, fh)


@pytest.mark.parametrize("how", [None, "delete_state_metadata"])
def test_checkpointer_round_trip_with_zero_size_leaves(tmp_path, how):
  _save_steps(tmp_path / "ckpt", [1, 2])
  if how:  # orbax's tree metadata is not needed: the template gives the tree and the
    _corrupt(str(tmp_path / "ckpt" / "2"), how)  # digest proves the data intact.
  ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt")
  with warnings.catch_warnings():
    warnings.simplefilter("error", ckpt_lib.CorruptCheckpointWarning)
    step, state = ckpt.restore_latest(_state(0))
  ckpt.close()
  assert step == 2
  want = _state(2)
  chex.assert_trees_all_equal(state, want, strict=True)


@pytest.mark.parametrize("how", ["delete_data", "delete_manifest", "delete_meta",
                                 "truncate_data", "digest"])
def test_checkpointer_skips_corrupt_step(tmp_path, how):
  _save_steps(tmp_path / "ckpt", [1, 2])
  _corrupt(str(tmp_path / "ckpt" / "2"), how)
  ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt")
  with pytest.warns(ckpt_lib.CorruptCheckpointWarning, match="step 2 .* corrupt or partial"):
    step, state = ckpt.restore_latest(_state(0))
  assert step == 1 and int(state["step"]) == 1
  assert ckpt.all_steps() == [1]
  ckpt.save(2, _state(5))  # the quarantined step number can be written again
  ckpt.close()
  ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt")
  step, state = ckpt.restore_latest(_state(0))
  ckpt.close()
  assert step == 2 and int(state["step"]) == 5


def test_checkpointer_refuses_other_structure_and_handles_all_corrupt(tmp_path):
  _save_steps(tmp_path / "ckpt", [3, 4])
  ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt")
  other = dict(_state(0), extra=jnp.zeros(2))
  with pytest.raises(ckpt_lib.IncompatibleCheckpointError, match="another structure"):
    ckpt.restore_latest(other)
  assert ckpt.all_steps() == [3, 4]  # nothing was moved
  ckpt.close()
  for step in ("3", "4"):
    _corrupt(str(tmp_path / "ckpt" / step), "delete_meta")
  ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt")
  with pytest.warns(ckpt_lib.CorruptCheckpointWarning):
    assert ckpt.restore_latest(_state(0)) is None
  assert ckpt.all_steps() == []
  ckpt.close()
