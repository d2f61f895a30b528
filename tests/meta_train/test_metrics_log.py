"""Metrics file, stdout lines, progress bar and wandb (real wandb, offline, read back)."""

import glob
import io
import json
import math
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

os.environ.setdefault("WANDB_SILENT", "true")

from meta_train import config as C  # pylint: disable=wrong-import-position
from meta_train.runtime import metrics_log as L  # pylint: disable=wrong-import-position
from meta_train.runtime import progress as P  # pylint: disable=wrong-import-position
from meta_train.runtime import run as R  # pylint: disable=wrong-import-position

TINY = ["optimizer.name=sgd_momentum", "task.kwargs.dim=2", "estimator.num_pairs=1",
        "estimator.truncation_length=2", "estimator.min_horizon=4", "estimator.max_horizon=4", "run.num_outer_steps=8",
        "run.steps_per_dispatch=2", "run.checkpoint_every=4", "run.log_every=2",
        "eval.enabled=true", "eval.num_tasks=2"]


def read_wandb_file(path):
  """Records of an offline ``.wandb`` file (LevelDB-log framing of ``wandb.proto`` Records)."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=import-outside-toplevel
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B"
  block, pos, pending, records = 32768, 7, b"", []
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # a block's tail too short for a header is padding
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    chunk = data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):  # full record, or last chunk of one
      rec = wandb_internal_pb2.Record()
      rec.ParseFromString(pending + chunk)
      records.append(rec)
      pending = b""
    elif kind in (2, 3):  # first / middle chunk
      pending += chunk
  return records


def wandb_contents(run_dir):
  """``(run ids, config dict, {step: {key: value}})`` of every offline run under ``run_dir``."""
  files = sorted(glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb")))
  assert files, f"no offline wandb run under {run_dir}"
  ids, config, history = [], {}, {}
  for path in files:
    for rec in read_wandb_file(path):
      kind = rec.WhichOneof("record_type")
      if kind == "run":
        ids.append(rec.run.run_id)
        for item in rec.run.config.update:
          config[item.key] = json.loads(item.value_json)
      elif kind == "config":
        for item in rec.config.update:
          config[item.key] = json.loads(item.value_json)
      elif kind == "history":
        row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
               for i in rec.history.item}
        history[row["_step"]] = row
  config = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()
            if not k.startswith("_")}
  return ids, config, history


def test_to_host_flattens_nested_vector_and_integer_metrics():
  out = L.to_host({"meta_loss": jnp.float32(0.5), "nonfinite": jnp.int32(3),
                   "family": {"quadratic": jnp.float32(0.25)},
                   "per_particle": jnp.array([1.0, 2.0]), "bad": jnp.float32(jnp.nan)})
  assert out["meta_loss"] == 0.5 and isinstance(out["meta_loss"], float)
  assert out["nonfinite"] == 3 and isinstance(out["nonfinite"], int)
  assert out["family/quadratic"] == 0.25
  assert out["per_particle/0"] == 1.0 and out["per_particle/1"] == 2.0
  assert math.isnan(out["bad"])


def test_metrics_file_round_trip_truncation_and_torn_lines(tmp_path):
  path = tmp_path / "m" / "metrics.jsonl"
  f = L.MetricsFile(path)
  for step in (2, 4, 6, 8):
    f.write({"step": step, "meta_loss": step / 10, "x": float("inf")})
  f.close()
  with open(path, "a", encoding="utf-8") as fh:
    fh.write('{"step": 10, "meta_lo')  # a writer killed mid-line
  recs = L.MetricsFile.read(path)
  assert [r["step"] for r in recs] == [2, 4, 6, 8]
  assert recs[0] == {"step": 2, "meta_loss": 0.2, "x": "inf"}
  assert L.MetricsFile(path).truncate_after(5) == 2
  assert [r["step"] for r in L.MetricsFile.read(path)] == [2, 4]
  assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 2


def test_format_line():
  line = L.format_line({"step": 20, "meta_loss": 0.123456, "grad_norm": 2.0, "nonfinite": 0,
                        "outer_steps_per_s": 12.5, "inner_steps_per_s": 123456.7}, 100)
  assert line == ("step 20/100 | meta_loss 0.1235 | grad_norm 2 | nonfinite 0 | "
                  "12.5 outer steps/s | 123,457 inner steps/s")


def test_progress_bar_only_on_terminals():
  class Tty(io.StringIO):
    def isatty(self):
      return True
  assert P.bar_enabled("auto", Tty()) and not P.bar_enabled("auto", io.StringIO())
  assert P.bar_enabled("on", io.StringIO()) and not P.bar_enabled("off", Tty())
  stream = io.StringIO()
  bar = P.Progress(10, 2, enabled=True, stream=stream)
  bar.update(4, meta_loss=0.25, inner_steps_per_s=12000.0)
  bar.close()
  text = stream.getvalue()
  assert "6/10" in text and "meta_loss=0.25" in text and "inner/s=12,000" in text
  assert "step/s" in text or "s/step" in text
  quiet = P.Progress(10, enabled=False)
  quiet.update(5, meta_loss=1.0)  # a no-op
  quiet.close()


def test_wandb_sink_offline_writes_config_and_history_and_resumes_same_run(tmp_path):
  cfg = C.to_dict(C.resolve("smoke"))
  for _ in range(2):  # the second sink continues the same wandb run
    sink = L.WandbSink(str(tmp_path), cfg, mode="offline", project="test")
    sink.write({"step": 3, "meta_loss": 0.5, "grad_norm": 1.5})
    sink.write({"step": 6, "meta_loss": 0.25, "grad_norm": 1.0})
    sink.close()
  ids, config, history = wandb_contents(str(tmp_path))
  run_id = (tmp_path / "wandb_id.txt").read_text().strip()
  assert ids == [run_id, run_id]
  assert config["estimator"] == cfg["estimator"] and config["optimizer"] == cfg["optimizer"]
  assert history[3]["meta_loss"] == 0.5 and history[6]["grad_norm"] == 1.0


def _tiny_run(run_dir):
  """One in-process run with wandb offline, a forced progress bar and a stand-in evaluation."""
  import meta_train.evaluate as ev  # pylint: disable=import-outside-toplevel
  calls = []

  def fake_eval(lopt, meta_params, family, out_dir, config, *, horizon_aware, family_name):
    assert family_name == "quadratic"  # the run's task.family names the held-out draws
    calls.append((lopt, meta_params, family, out_dir, config, horizon_aware))
    return {"win_fraction": 0.5, "files": ["report.json"]}

  mp = pytest.MonkeyPatch()
  mp.setattr(ev, "evaluate_and_report", fake_eval)
  cfg = C.resolve("smoke", TINY + ["wandb.mode=offline", "run.progress=on"])
  out = io.StringIO()
  try:
    result = R.run(cfg, run_dir, stdout=out)
  finally:
    mp.undo()
  return cfg, run_dir, result, out.getvalue(), calls


# One test (not several sharing a fixture): pytest-xdist would run a module fixture once per
# worker, and compiling the trainer is the expensive part.
def test_run_logs_to_file_wandb_bar_calls_eval_and_resumes(tmp_path):
  tiny = _tiny_run(tmp_path)
  _check_metrics_wandb_and_bar(tiny)
  _check_evaluation_hook(tiny)
  _check_rerun_extends_the_run(tiny)


def _check_metrics_wandb_and_bar(tiny_run):
  cfg, run_dir, result, out, _ = tiny_run
  assert result.step == 8 and result.resumed_from is None
  recs = L.MetricsFile.read(run_dir / "metrics.jsonl")
  assert [r["step"] for r in recs] == [2, 4, 6, 8]
  for r in recs:
    for key in ("wall_time", "elapsed_s", "meta_loss", "grad_norm", "grad_variance",
                "nonfinite", "inner_steps"):
      assert key in r, key
    assert r["inner_steps"] == 2 * 2 * 2  # 2 outer steps x 2 particles x truncation 2
  for r in recs[1:]:  # the first interval holds the compile and is not timed
    assert r["outer_steps_per_s"] > 0
    assert r["inner_steps_per_s"] == pytest.approx(r["outer_steps_per_s"] * 4)
  ids, config, history = wandb_contents(str(run_dir))
  assert len(ids) == 1
  assert {k: config[k] for k in C.to_dict(cfg)} == C.to_dict(cfg)
  assert sorted(history) == [2, 4, 6, 8]
  for r in recs:
    assert history[r["step"]]["meta_loss"] == r["meta_loss"]
    assert history[r["step"]]["nonfinite"] == r["nonfinite"]
  assert "8/8" in out and "meta_loss=" in out  # the tqdm bar
  assert "step 2/8 |" not in out  # no plain metric lines while the bar is shown
  assert C.from_json((run_dir / "config.json").read_text()) == cfg
  assert (run_dir / "optimizer.safetensors").exists()
  from PIL import Image  # pylint: disable=import-outside-toplevel
  assert Image.open(run_dir / "meta_loss.png").mode == "P"  # the meta-loss curve, at the end


def _check_evaluation_hook(tiny_run):
  _, run_dir, result, _, calls = tiny_run
  assert len(calls) == 1
  lopt, meta_params, _, out_dir, eval_config, horizon_aware = calls[0]
  assert lopt == result.lopt and out_dir == str(run_dir)
  assert horizon_aware is False  # the smoke preset's unrolls do not pass num_steps
  assert eval_config.num_tasks == 2
  np.testing.assert_array_equal(np.asarray(meta_params["log_lr"]),
                                np.asarray(result.state.meta_params["log_lr"]))
  assert result.eval_summary["win_fraction"] == 0.5


def _check_rerun_extends_the_run(tiny_run):
  cfg, run_dir, result, _, _ = tiny_run
  out = io.StringIO()
  longer = C.apply_overrides(cfg, ["run.num_outer_steps=10", "run.progress=off",
                                   "wandb.mode=disabled", "eval.enabled=false"])
  again = R.run(longer, run_dir, stdout=out)
  assert again.resumed_from == 8 and again.step == 10
  text = out.getvalue()
  assert f"resumed {run_dir} from checkpoint step 8" in text
  assert "step 10/10 | meta_loss " in text
  assert [r["step"] for r in L.MetricsFile.read(run_dir / "metrics.jsonl")] == [2, 4, 6, 8, 10]
  assert not np.array_equal(np.asarray(again.state.meta_params["log_lr"]),
                            np.asarray(result.state.meta_params["log_lr"]))
