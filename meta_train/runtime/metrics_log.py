"""Where a run's metrics go: a JSONL metrics file, plain stdout lines and Weights & Biases.

Pure functions return metrics (dicts of scalar arrays, see ``MetaTrainer.step``); only the
driver (:mod:`meta_train.runtime.run`) turns them into host floats with :func:`to_host` and
hands one record per logged step to a :class:`RunLogger`, which writes it to every sink.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
from typing import Any, Mapping, TextIO

import jax
import numpy as np

Record = dict[str, Any]


def to_host(metrics: Mapping[str, Any], prefix: str = "") -> Record:
  """Flattens a (nested) dict of scalar or small arrays into ``{name: float|int}``.

  Nested dicts join names with ``/``; a vector metric ``v`` of length n becomes ``v/0`` ...
  ``v/{n-1}``; integer and boolean arrays become ints, floats stay floats (NaN kept).
  """
  out: Record = {}
  host = jax.device_get(dict(metrics))
  for k, v in host.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(to_host(v, prefix=f"{name}/"))
      continue
    a = np.asarray(v)
    if a.ndim == 0:
      out[name] = _scalar(a)
    else:
      for i, x in enumerate(a.reshape(-1)):
        out[f"{name}/{i}"] = _scalar(x)
  return out


def _scalar(a) -> float | int:
  a = np.asarray(a)
  if a.dtype.kind in "iub":
    return int(a)
  return float(a)


def _json_safe(v):
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN/inf; keep them readable ("nan", "inf").
  return v


class MetricsFile:
  """Append-only JSONL file: one JSON object per logged step, each with an integer ``step``.

  Args:
    path: the file (created if missing).
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    self._f: TextIO | None = None

  @staticmethod
  def read(path: str | os.PathLike) -> list[Record]:
    """The records of a metrics file; a torn last line (a killed writer) is ignored."""
    if not os.path.exists(path):
      return []
    out = []
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
          out.append(rec)
    return out

  def truncate_after(self, step: int) -> int:
    """Drops records with ``step > step`` and torn lines (done on resume); returns lines kept."""
    self.close()
    keep = [r for r in self.read(self.path) if r["step"] <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      for r in keep:
        f.write(json.dumps(r) + "\n")
    os.replace(tmp, self.path)
    return len(keep)

  def write(self, record: Record) -> None:
    if self._f is None:
      self._f = open(self.path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
    self._f.write(json.dumps({k: _json_safe(v) for k, v in record.items()}) + "\n")
    self._f.flush()

  def close(self) -> None:
    if self._f is not None:
      self._f.close()
      self._f = None


class NullMetricsFile:
  """Stands in for :class:`MetricsFile` where nothing is written (processes other than 0)."""

  def truncate_after(self, step: int) -> int:
    del step
    return 0

  def write(self, record: Record) -> None:
    del record

  def close(self) -> None:
    pass


def format_line(record: Mapping[str, Any], total_steps: int | None = None) -> str:
  """One human-readable line, e.g. ``step 20/100 | meta_loss 0.4321 | ... inner steps/s``."""
  step = record.get("step")
  parts = [f"step {step}" + (f"/{total_steps}" if total_steps else "")]
  for key in ("meta_loss", "grad_norm", "nonfinite"):
    if key in record:
      parts.append(f"{key} {_fmt(record[key])}")
  if "outer_steps_per_s" in record:
    parts.append(f"{_fmt(record['outer_steps_per_s'])} outer steps/s")
  if "inner_steps_per_s" in record:
    parts.append(f"{record['inner_steps_per_s']:,.0f} inner steps/s")
  return " | ".join(parts)


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


class WandbSink:
  """A wandb run writing into ``run_dir`` (``wandb.init(dir=run_dir, mode=...)``).

  The wandb run id is kept in ``run_dir/wandb_id.txt`` so a resumed run continues the same
  wandb run (``resume="allow"``). ``WANDB_SILENT`` is set; in offline mode nothing touches the
  network.

  Args:
    run_dir: the run directory.
    config: the resolved run config (a JSON dict) logged as the wandb run config.
    mode: ``"offline"`` or ``"online"``.
    project, entity, name: wandb run identity.
  """

  def __init__(self, run_dir: str, config: Mapping[str, Any], *, mode: str, project: str,
               entity: str | None = None, name: str | None = None):
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb  # pylint: disable=import-outside-toplevel
    id_file = os.path.join(run_dir, "wandb_id.txt")
    if os.path.exists(id_file):
      with open(id_file, encoding="utf-8") as f:
        run_id = f.read().strip()
    else:
      run_id = secrets.token_hex(4)  # wandb run ids: short lowercase alphanumerics
      with open(id_file, "w", encoding="utf-8") as f:
        f.write(run_id + "\n")
    settings = wandb.Settings(silent=True, console="off", x_disable_stats=True,
                              disable_git=True, save_code=False, disable_job_creation=True)
    self.run = wandb.init(dir=run_dir, mode=mode, project=project, entity=entity,
                          name=name or os.path.basename(os.path.abspath(run_dir)),
                          id=run_id, resume="allow", config=dict(config), settings=settings)

  def write(self, record: Record) -> None:
    data = {k: v for k, v in record.items() if k != "step"}
    self.run.log(data, step=int(record["step"]))

  def summary(self, values: Mapping[str, Any]) -> None:
    for k, v in values.items():
      self.run.summary[k] = v

  def close(self) -> None:
    """Finishes the run and, unless another wandb run is active, waits until wandb's service
    has written everything (``wandb.teardown``; offline files are otherwise completed later)."""
    import wandb  # pylint: disable=import-outside-toplevel
    self.run.finish()
    if wandb.run is None:
      wandb.teardown()


class RunLogger:
  """Fans one record per logged step out to the metrics file, stdout and wandb.

  Args:
    metrics_file: the run's :class:`MetricsFile`.
    wandb_sink: a :class:`WandbSink` or None.
    stdout: stream for plain lines, or None to print nothing (when a progress bar shows them).
    total_steps: shown as ``step s/total`` in plain lines.
  """

  def __init__(self, metrics_file: MetricsFile, *, wandb_sink: WandbSink | None = None,
               stdout: TextIO | None = sys.stdout, total_steps: int | None = None):
    self.metrics_file = metrics_file
    self.wandb = wandb_sink
    self.stdout = stdout
    self.total_steps = total_steps

  def log(self, record: Record) -> None:
    self.metrics_file.write(record)
    if self.wandb is not None:
      self.wandb.write(record)
    if self.stdout is not None:
      self.stdout.write(format_line(record, self.total_steps) + "\n")
      self.stdout.flush()

  def summary(self, values: Mapping[str, Any]) -> None:
    if self.wandb is not None:
      self.wandb.summary(values)

  def close(self) -> None:
    self.metrics_file.close()
    if self.wandb is not None:
      self.wandb.close()
