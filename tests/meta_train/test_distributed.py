"""Multi-process runs: the layout from flags/environment, and 2 real processes on 127.0.0.1.

The 2-process test launches ``meta-train`` twice with ``--coordinator 127.0.0.1:PORT`` (CPU
collectives: gloo over TCP) and checks the result equals the 1-process run, that only process 0
wrote files, that killing a process makes the other exit promptly with a clear message, and
that rerunning the same commands resumes.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import learned_opt
from meta_train.runtime import checkpoint as ckpt_lib
from meta_train.runtime import distributed as dist

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_flags_take_precedence_over_environment():
  env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  spec = dist.resolve_spec("10.0.0.1:1234", 2, 1, environ=env, heartbeat_timeout_s=7)
  assert spec == dist.ClusterSpec("10.0.0.1:1234", 2, 1, source="flags", heartbeat_timeout_s=7)
  assert dist.resolve_spec(environ=env) == dist.ClusterSpec("h:1", 4, 3, source="env")


def test_single_process_unless_something_asks_for_more():
  assert dist.resolve_spec(environ={}) is None
  assert dist.resolve_spec("h:1", 1, 0, environ={}) is None  # one process: nothing to join
  assert dist.resolve_spec(environ={"SLURM_JOB_ID": "5", "SLURM_PROCID": "0",
                                    "SLURM_NTASKS": "1"}) is None


def test_slurm_step_and_auto_detection_defer_to_jax():
  slurm = {"SLURM_JOB_ID": "5", "SLURM_PROCID": "1", "SLURM_NTASKS": "4"}
  assert dist.resolve_spec(environ=slurm) == dist.ClusterSpec(source="slurm")
  assert dist.resolve_spec(auto=True, environ={}) == dist.ClusterSpec(source="auto")
  # --distributed fills in what the flags leave out.
  assert dist.resolve_spec("h:9", auto=True, environ={}) == dist.ClusterSpec("h:9",
                                                                             source="flags")


@pytest.mark.parametrize("args,env,message", [
    (("h:1", 2, None), {}, "incomplete multi-process layout from flags: set --process-id too"),
    ((None, None, None), {"JAX_NUM_PROCESSES": "2"},
     "incomplete multi-process layout from env: set JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID"),
    (("nohost", 2, 0), {}, "--coordinator must look like HOST:PORT, got 'nohost'"),
    (("h:1", 2, 2), {}, r"--process-id must be in \[0, 2\) for 2 processes, got 2"),
    (("h:1", 0, 0), {}, "--num-processes must be >= 1, got 0"),
    ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two",
                          "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES must be an integer"),
])
def test_bad_layouts_name_the_flag_or_variable(args, env, message):
  with pytest.raises(dist.DistributedError, match=message):
    dist.resolve_spec(*args, environ=env)


def test_bad_timeout_is_refused():
  with pytest.raises(dist.DistributedError, match="heartbeat_timeout_s must be a positive int"):
    dist.resolve_spec("h:1", 2, 0, environ={}, heartbeat_timeout_s=0)


def test_cli_reports_a_bad_layout_with_exit_status_2(capsys):
  from meta_train.runtime import cli  # pylint: disable=import-outside-toplevel
  with pytest.raises(SystemExit) as e:
    cli.main(["--preset", "smoke", "--coordinator", "127.0.0.1:1", "--num-processes", "2"])
  assert e.value.code == 2
  assert "incomplete multi-process layout from flags: set --process-id" in capsys.readouterr().err


def test_non_writer_checkpointer_refuses_to_save_and_creates_nothing(tmp_path):
  ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt", writer=False)
  with pytest.raises(RuntimeError, match="not the writer"):
    ckpt.save(1, {"x": np.zeros(2)})
  ckpt.close()


def test_single_process_helpers_are_plain():
  x = jax.numpy.arange(4.0)
  host = dist.to_host({"x": x})
  assert isinstance(host["x"], np.ndarray) and host["x"].tolist() == [0, 1, 2, 3]
  dist.check_same(3, "anything")  # one process: nothing to compare
  dist.barrier("nothing")
  assert dist.is_writer() and dist.describe() == "process 0 of 1"
  with pytest.raises(KeyError):  # single process: errors propagate unchanged
    with dist.exit_on_peer_failure("/tmp/run"):
      raise KeyError("boom")


# --- two real processes ----------------------------------------------------------------------

SMOKE8 = ["estimator.num_pairs=8", "run.progress=off"]

# Process 1 runs under an audit hook that records every write-like file operation Python makes
# under the run directory (orbax/tensorstore writes happen only in Checkpointer.save, which a
# non-writer refuses, see the test above).
_AUDITED = r"""
import atexit, json, os, runpy, sys
run_dir, log = os.path.abspath(sys.argv[1]), sys.argv[2]
seen = []
def hook(event, args):
  if event == "open":
    path, mode, flags = args
    writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
  else:
    path, writes = (args[0] if args else ""), event in (
        "os.rename", "os.replace", "os.mkdir", "os.remove", "os.rmdir", "os.truncate",
        "shutil.rmtree", "shutil.move", "os.symlink", "os.link", "os.chmod", "os.utime")
  if writes and isinstance(path, (str, bytes, os.PathLike)):
    path = os.path.abspath(os.fsdecode(path))
    if path.startswith(run_dir):
      seen.append([event, path])
sys.addaudithook(hook)
atexit.register(lambda: open(log, "w").write(json.dumps(seen)))
sys.argv = ["meta-train"] + sys.argv[3:]
runpy.run_module("meta_train.cli", run_name="__main__")
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(cache):
  env = dict(os.environ, JAX_PLATFORMS="cpu", WANDB_MODE="disabled", WANDB_SILENT="true",
             JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  for k in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(k, None)
  return env


def _args(run_dir, extra=()):
  return ["--preset", "smoke", "--run-dir", str(run_dir), "--wandb", "disabled", *SMOKE8,
          *extra]


def _launch(run_dir, env, port, audit_log=None, extra=(), heartbeat=30):
  procs = []
  for i in (0, 1):
    flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id",
             str(i), "--heartbeat-timeout", str(heartbeat), "--init-timeout", "120"]
    if i == 1 and audit_log is not None:
      cmd = [sys.executable, "-c", _AUDITED, str(run_dir), str(audit_log)]
    else:
      cmd = [sys.executable, "-m", "meta_train.cli"]
    procs.append(subprocess.Popen(cmd + _args(run_dir, extra) + flags, env=env, cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def _steps(run_dir):
  d = os.path.join(run_dir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _theta(run_dir):
  _, theta = learned_opt.load(os.path.join(run_dir, "optimizer.safetensors"))
  return [np.asarray(x) for x in jax.tree.leaves(theta)]


# One test for both: the second half reuses the first half's compilation cache.
def test_two_processes_match_one_and_a_dead_peer_stops_the_other_then_resumes(tmp_path):
  env = _env(tmp_path / "cache")
  t0 = time.monotonic()
  one = subprocess.run([sys.executable, "-m", "meta_train.cli", *_args(tmp_path / "one")],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
                       check=False)
  assert one.returncode == 0, one.stderr[-3000:]

  print(f"1-process run {time.monotonic() - t0:.1f}s")
  # (b) 2 processes x 1 CPU device, particles sharded over both, gloo all-reduce.
  two = tmp_path / "two"
  procs = _launch(two, env, _free_port(), audit_log=tmp_path / "audit.json")
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "on 2 devices (cpu) in 2 processes" in outs[0][0]
  assert "meta-train:" not in outs[1][0] and "step 20/20" not in outs[1][0]  # 0 speaks for all
  for a, b in zip(_theta(tmp_path / "one"), _theta(two)):
    # All-reduce of 2 partial sums vs one sum: float32 rounding (see test_sharding.py).
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(a))))
  with open(tmp_path / "audit.json", encoding="utf-8") as f:
    assert json.load(f) == []  # process 1 wrote nothing under the run directory
  assert sorted(os.listdir(two)) == ["checkpoints", "config.json", "meta_loss.png",
                                     "metrics.jsonl", "optimizer.safetensors"]
  assert _steps(two) == [10, 20]
  with open(two / "metrics.jsonl", encoding="utf-8") as f:
    assert [json.loads(line)["step"] for line in f] == [5, 10, 15, 20]  # one writer, no dupes

  print(f"2-process run {time.monotonic() - t0:.1f}s")
  # (c) Kill process 1 after the first checkpoint: process 0 must exit non-zero, promptly.
  dead = tmp_path / "dead"
  long_run = ["run.num_outer_steps=40", "run.checkpoint_every=10"]
  procs = _launch(dead, env, _free_port(), extra=long_run)
  deadline = time.monotonic() + 240
  while not _steps(dead) and procs[0].poll() is None and time.monotonic() < deadline:
    time.sleep(0.005)
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  try:
    _, err0 = procs[0].communicate(timeout=120)  # gloo fails at once; 30 s heartbeat
  except subprocess.TimeoutExpired:
    procs[0].kill()
    pytest.fail("process 0 hung after its peer died")
  _, err1 = procs[1].communicate()
  assert procs[1].returncode == -signal.SIGKILL, (procs[0].returncode, err0[-2000:],
                                                  err1[-2000:])  # not dead before the kill
  assert procs[0].returncode == dist.EXIT_PEER_LOST, err0[-3000:]
  assert "process 0 of 2: the multi-process run failed, most likely because another process " \
         "died" in err0
  assert f"rerun the same command on every host to resume from the newest checkpoint in " \
         f"{dead}" in err0
  at_kill = _steps(dead)
  assert at_kill and at_kill[-1] < 40
  print(f"process 0 exited {time.monotonic() - killed_at:.1f}s after its peer was killed")

  print(f"killed {time.monotonic() - t0:.1f}s")
  procs = _launch(dead, env, _free_port(), extra=long_run)
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert (f"from checkpoint step {at_kill[-1]} on 2 devices (checkpoint written on 2)"
          in outs[0][0])
  assert _steps(dead)[-1] == 40
  print(f"resumed {time.monotonic() - t0:.1f}s")
  print(outs[0][0])
