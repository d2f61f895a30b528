"""The driver of a meta-training run: run directory, resume, loop, logging, checkpoints, export.

A run directory holds::

  config.json             the resolved RunConfig
  metrics.jsonl           one JSON object per logged step
  start.json              optimizer.start.scheme=tuned_adam_like: the sweep it started from;
                          scheme=file: the start file's path and sha256
  checkpoints/<step>/     orbax checkpoints of the whole MetaTrainerState (+ a digest)
  optimizer.safetensors   the learned optimizer (learned_opt.save), rewritten at every checkpoint
  meta_loss.png           meta-loss and meta-gradient norm against outer steps, at the end
  wandb/                  the wandb run (offline by default)
  eval.{json,md,png}      the final evaluation report, if eval.enabled

Running again with the same directory resumes from the newest intact checkpoint; since the
trainer is deterministic given its state, the result is bit-identical to an uninterrupted run.
A directory holding another run's config (differing in a field that changes the trajectory)
is refused with :class:`RunDirError` listing the differing fields.

Example::

  cfg = config.resolve("smoke", ["run.num_outer_steps=10"])
  result = run(cfg, "/tmp/runs/smoke")
  result.state.meta_params
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, NamedTuple, TextIO

import jax
import optax

from meta_train import config as config_lib
from meta_train.estimators import estimator as est_lib
from meta_train.runtime import checkpoint as ckpt_lib
from meta_train.runtime import distributed as dist_lib
from meta_train.runtime import metrics_log as log_lib
from meta_train.runtime import progress as progress_lib
from meta_train.runtime import sharding as sharding_lib

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
OPTIMIZER_FILE = "optimizer.safetensors"
META_LOSS_FIGURE = "meta_loss.png"
START_FILE = "start.json"
# Folded into the run's key for the tuned start's sweep (its own draws of the family).
_START_TAG = 0x57A27


class RunDirError(ValueError):
  """The run directory cannot be used for this config (e.g. it holds an incompatible run)."""


class RunResult(NamedTuple):
  """What :func:`run` returns."""

  state: Any  # the final MetaTrainerState
  step: int  # outer steps done
  resumed_from: int | None  # the checkpoint step the run resumed from, if any
  run_dir: str
  lopt: Any  # the learned optimizer object
  eval_summary: dict | None


def build_outer_optimizer(cfg: config_lib.RunConfig) -> optax.GradientTransformation:
  """The outer optimizer: optional global-norm clip, then Adam/SGD with the lr schedule."""
  o = cfg.outer
  total = cfg.run.num_outer_steps
  if o.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, o.lr, o.warmup_steps, total, end_value=0.0)
  elif o.warmup_steps:
    lr = optax.join_schedules([optax.linear_schedule(0.0, o.lr, o.warmup_steps),
                               optax.constant_schedule(o.lr)], [o.warmup_steps])
  else:
    lr = o.lr
  opt = optax.adam(lr) if o.optimizer == "adam" else optax.sgd(lr)
  if o.clip > 0:
    return optax.chain(optax.clip_by_global_norm(o.clip), opt)
  return opt


def build_trainer(cfg: config_lib.RunConfig | config_lib.Built, mesh=None):
  """``(trainer, lopt, family)`` for a config (compiles nothing).

  Args:
    cfg: a config (validated and built here by :func:`meta_train.config.build`), or what
      ``build`` returned (its objects are used, nothing is built again).
    mesh: a device mesh (:func:`meta_train.runtime.sharding.make_mesh`) to shard the
      particles over.
  """
  from meta_train import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
  built = cfg if isinstance(cfg, config_lib.Built) else config_lib.build(cfg)
  trainer = trainer_lib.MetaTrainer(built.estimator, outer_optimizer=build_outer_optimizer(
      built.cfg), steps_per_dispatch=built.cfg.run.steps_per_dispatch, mesh=mesh,
      start=built.start)
  return trainer, built.lopt, built.family


def _write_atomic(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def prepare_run_dir(cfg: config_lib.RunConfig, run_dir: str,
                    write: bool = True) -> config_lib.RunConfig | None:
  """Creates ``run_dir`` or checks it holds a compatible run; writes ``config.json``.

  With ``write=False`` (processes other than 0) it only checks.

  Returns:
    The config previously stored there (None for a new directory).

  Raises:
    RunDirError: if ``config.json`` is unreadable or differs in a trajectory-changing field.
  """
  if write:
    os.makedirs(run_dir, exist_ok=True)
  path = os.path.join(run_dir, CONFIG_FILE)
  saved = None
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      text = f.read()
    try:
      saved = config_lib.from_json(text)
    except config_lib.ConfigError as e:
      raise RunDirError(f"{path} holds a config this version cannot read ({e}); use another "
                        f"--run-dir") from None
    bad = config_lib.incompatible_fields(saved, cfg)
    if bad:
      lines = "\n".join(f"  {p}: run dir has {json.dumps(a)}, this run has {json.dumps(b)}"
                        for p, a, b in bad)
      raise RunDirError(f"refusing to resume: {run_dir} holds a run with an incompatible "
                        f"config; these fields differ:\n{lines}\nUse another --run-dir, or "
                        f"the same settings to resume.")
  if write:
    _write_atomic(path, config_lib.to_json(cfg))
  return saved


def export_optimizer(run_dir: str, lopt: Any, meta_params: Any,
                     cfg: config_lib.RunConfig | None = None, step: int | None = None,
                     command: str | None = None, start: dict | None = None) -> str:
  """Writes ``run_dir/optimizer.safetensors`` with ``learned_opt.save`` (atomic).

  The file's provenance records the producer, the outer step, the resolved config, (when
  given) the command line that ran it and the tuned start's sweep, so a shipped optimizer says
  how to reproduce it.
  """
  import learned_opt  # pylint: disable=import-outside-toplevel
  from meta_train.recipe import frozen  # pylint: disable=import-outside-toplevel
  lopt, meta_params = frozen.exported(lopt, meta_params)  # frozen parts: the whole chain
  path = os.path.join(run_dir, OPTIMIZER_FILE)
  provenance = {"producer": "meta-train", "outer_step": step,
                "family": None if cfg is None else cfg.task.family,
                "config": None if cfg is None else config_lib.to_dict(cfg)}
  if command is not None:
    provenance["command"] = command
  if start is not None:
    provenance["start"] = start
  learned_opt.save(path, lopt, jax.device_get(meta_params), provenance=provenance)
  return path


def run_evaluation(cfg: config_lib.RunConfig, lopt, meta_params, family, run_dir: str):
  """``meta-eval``'s in-distribution suite on the run's family; returns its headline numbers.

  Writes ``eval.json``, ``eval.md`` and ``eval_curves.png`` next to the optimizer file.
  """
  from meta_train import evaluate as eval_lib  # pylint: disable=import-outside-toplevel
  from meta_train.recipe import frozen  # pylint: disable=import-outside-toplevel
  lopt, meta_params = frozen.exported(lopt, meta_params)
  return eval_lib.evaluate_and_report(lopt, meta_params, family, run_dir, cfg.eval,
                                      horizon_aware=cfg.estimator.horizon_aware,
                                      family_name=cfg.task.family)


def resolve_start(built: config_lib.Built, run_dir: str, write: bool
                  ) -> tuple[config_lib.Built, dict | None]:
  """``(built, start record)`` with ``optimizer.start.scheme=tuned_adam_like`` resolved.

  That start is :func:`learned_opt.inits.adam_like` at the family's tuned constant-Adam rate:
  :func:`meta_train.recipe.tuned_adam` sweeps the rate on draws of the family (runs of
  ``estimator.max_horizon`` steps, keys folded from ``run.seed``) before meta-training, and the
  sweep is kept in ``start.json``, so a resumed run starts from the same rate without
  sweeping again. ``scheme=file`` comes back unchanged with the file's sha256 as its record
  (kept in ``start.json`` too: a resumed run refuses a start file that changed since). Other
  schemes come back unchanged, with ``None``.

  Raises:
    RunDirError: the start file differs from the one the run in ``run_dir`` began from.
  """
  start = built.cfg.optimizer.start
  if start.scheme == "file":
    return built, _file_start_record(start.path, os.path.join(run_dir, START_FILE), write)
  if start.scheme != "tuned_adam_like":
    return built, None
  import functools  # pylint: disable=import-outside-toplevel
  import learned_opt  # pylint: disable=import-outside-toplevel
  from meta_train import recipe  # pylint: disable=import-outside-toplevel
  path = os.path.join(run_dir, START_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
  else:
    key = jax.random.fold_in(jax.random.key(built.cfg.run.seed), _START_TAG)
    tuned = recipe.tuned_adam(built.family, key, num_steps=built.cfg.estimator.max_horizon)
    record = {"scheme": start.scheme, "decay": start.decay, **tuned.provenance()}
    if write:
      _write_atomic(path, json.dumps(record, indent=2) + "\n")
  fn = functools.partial(learned_opt.inits.adam_like, built.lopt,
                         learning_rate=float(record["learning_rate"]), decay=start.decay)
  return built._replace(start=fn), record


def _file_start_record(start_path: str, record_path: str, write: bool) -> dict:
  """``{"scheme": "file", "path", "sha256"}`` of the start file, checked against (or written
  to) ``record_path``."""
  from meta_train.recipe import frozen  # pylint: disable=import-outside-toplevel
  record = {"scheme": "file", "path": start_path, "sha256": frozen.file_digest(start_path)}
  if os.path.exists(record_path):
    with open(record_path, encoding="utf-8") as f:
      saved = json.load(f)
    if saved.get("sha256") != record["sha256"]:
      raise RunDirError(f"refusing to resume: the start file {start_path} is not the one the "
                        f"run began from (sha256 {saved.get('sha256')}, now "
                        f"{record['sha256']}); use another --run-dir")
  elif write:
    _write_atomic(record_path, json.dumps(record, indent=2) + "\n")
  return record


def write_meta_loss_figure(run_dir: str) -> str | None:
  """Writes ``meta_loss.png`` (meta-loss and meta-gradient norm against outer steps) from the
  run's ``metrics.jsonl``; returns its path (``None`` when nothing was logged)."""
  from meta_train.evaluation import figures  # pylint: disable=import-outside-toplevel
  records = log_lib.MetricsFile.read(os.path.join(run_dir, METRICS_FILE))
  if not records:
    return None
  return figures.meta_loss_figure({os.path.basename(os.path.normpath(run_dir)): records},
                                  os.path.join(run_dir, META_LOSS_FIGURE),
                                  "meta-loss against outer steps")


class _Interval:
  """Accumulates host metrics of the dispatches between two logged steps."""

  def __init__(self):
    self.sums: dict[str, float] = {}
    self.count = 0
    self.timed_steps = 0
    self.timed_inner = 0
    self.start = time.perf_counter()

  def add(self, metrics: dict[str, Any], steps: int, timed: bool) -> None:
    for k, v in metrics.items():
      self.sums[k] = self.sums.get(k, 0) + v
    self.count += 1
    if timed:
      self.timed_steps += steps
      self.timed_inner += metrics.get("inner_steps", 0)

  def record(self, step: int, elapsed: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"step": step, "wall_time": time.time(), "elapsed_s": elapsed}
    for k, v in self.sums.items():
      if k in est_lib.COUNT_METRICS:
        rec[k] = v  # totals over the interval
      else:
        rec[k] = v / self.count
    dt = time.perf_counter() - self.start
    if self.timed_steps and dt > 0:
      rec["outer_steps_per_s"] = self.timed_steps / dt
      rec["inner_steps_per_s"] = self.timed_inner / dt
    return rec


def run(cfg: config_lib.RunConfig | config_lib.Built, run_dir: str | os.PathLike, *,
        stdout: TextIO | None = None, command: str | None = None) -> RunResult:
  """Meta-trains as ``cfg`` says, in ``run_dir``, resuming from its newest intact checkpoint.

  Args:
    cfg: the run's config (validated here, before anything is compiled), or what
      :func:`meta_train.config.build` returned for it (then nothing is validated or built
      again: ``meta-train`` validates once, before joining the run).
    run_dir: the run directory (created if missing).
    stdout: where plain log lines and messages go (default ``sys.stdout``).
    command: the command line that started the run, recorded in the exported optimizer's
      provenance (``meta-train`` passes its own).

  Returns:
    A :class:`RunResult` with the final state.

  Raises:
    ConfigError: invalid config. RunDirError: incompatible run directory.
  """
  stdout = sys.stdout if stdout is None else stdout
  built = cfg if isinstance(cfg, config_lib.Built) else config_lib.build(cfg)
  cfg = built.cfg
  run_dir = os.path.abspath(os.fspath(run_dir))
  # --- distributed hook (meta_train/runtime/sharding.py, meta_train/runtime/distributed.py) ---
  writer = dist_lib.is_writer()  # only process 0 writes the run directory
  try:
    mesh = sharding_lib.make_mesh(cfg.run.num_devices)
  except ValueError as e:
    raise config_lib.ConfigError("run.num_devices", str(e)) from None
  config_lib.check_devices(cfg, mesh.size)  # before anything is compiled
  # --- end distributed hook ---
  prepare_run_dir(cfg, run_dir, write=writer)
  built, start_record = resolve_start(built, run_dir, writer)
  trainer, lopt, family = build_trainer(built, mesh)
  total, k = cfg.run.num_outer_steps, cfg.run.steps_per_dispatch

  key = jax.random.key(cfg.run.seed)
  template = jax.eval_shape(trainer.init, key)  # shapes only: nothing is compiled or run
  ckpt = ckpt_lib.Checkpointer(os.path.join(run_dir, CHECKPOINT_DIR),
                               max_to_keep=cfg.run.max_to_keep)
  try:
    restored = ckpt.restore_latest(template=template)
  except ckpt_lib.IncompatibleCheckpointError as e:
    ckpt.close()
    raise RunDirError(f"refusing to resume: {e}") from None
  resumed_from = None
  step = 0
  if restored is None:
    state = trainer.init(key)
  else:
    resumed_from, state = restored
    step = int(resumed_from)
    if int(jax.device_get(state.step)) != step:
      raise RunDirError(f"checkpoint {step} holds a state at step {int(state.step)}")
    state = sharding_lib.place(state, trainer.shardings)  # distributed hook
  dist_lib.check_same(step, "the checkpoint step to resume from")  # distributed hook
  metrics_file = (log_lib.MetricsFile(os.path.join(run_dir, METRICS_FILE)) if writer
                  else log_lib.NullMetricsFile())  # distributed hook
  metrics_file.truncate_after(step)

  bar_on = progress_lib.bar_enabled(cfg.run.progress, stdout)
  progress = progress_lib.Progress(total, step, enabled=bar_on, stream=stdout)
  say = progress.write if bar_on else (lambda m: print(m, file=stdout, flush=True))
  if not writer:  # distributed hook: one voice per run
    bar_on, say = False, lambda m: None
    progress = progress_lib.Progress(total, step, enabled=False, stream=stdout)
  wandb_sink = None
  if cfg.wandb.mode != "disabled" and writer:  # distributed hook
    wandb_sink = log_lib.WandbSink(run_dir, config_lib.to_dict(cfg), mode=cfg.wandb.mode,
                                   project=cfg.wandb.project, entity=cfg.wandb.entity,
                                   name=cfg.wandb.name)
  logger = log_lib.RunLogger(metrics_file, wandb_sink=wandb_sink,
                             stdout=None if bar_on or not writer else stdout,
                             total_steps=total)
  if start_record is not None and start_record["scheme"] == "file":
    frozen = cfg.optimizer.frozen
    say(f"meta-train: starting from {start_record['path']}"
        + (f"; frozen: {', '.join(frozen)}" if frozen else ""))
  elif start_record is not None:
    say(f"meta-train: tuned Adam start at learning rate {start_record['learning_rate']:g} "
        f"(the sweep is in {START_FILE})")
  if resumed_from is not None:
    written_on = (ckpt.restored_meta or {}).get("num_devices", "an unrecorded number of")
    say(f"meta-train: resumed {run_dir} from checkpoint step {resumed_from} on {mesh.size} "
        f"device{'s' * (mesh.size != 1)} (checkpoint written on {written_on})")
  elif step < total:
    say(f"meta-train: new run in {run_dir} ({total} outer steps) on "
        f"{sharding_lib.describe(mesh)}")

  t0 = time.perf_counter()
  interval = _Interval()
  first = True
  extra = {"num_devices": mesh.size, "num_processes": jax.process_count()}  # distributed hook
  try:
    while step < total:
      state, metrics = trainer.step(state)
      host = log_lib.to_host(metrics)  # blocks until the dispatch is done
      step += k
      if first:
        say(f"meta-train: first dispatch (compile included) took "
            f"{time.perf_counter() - t0:.1f}s")
        interval.start = time.perf_counter()
      interval.add(host, k, timed=not first)
      first = False
      progress.update(k, meta_loss=host.get("meta_loss"))
      if step % cfg.run.log_every == 0 or step == total:
        rec = interval.record(step, time.perf_counter() - t0)
        logger.log(rec)
        progress.update(0, meta_loss=rec.get("meta_loss"),
                        inner_steps_per_s=rec.get("inner_steps_per_s"))
        interval = _Interval()
      if step % cfg.run.checkpoint_every == 0 or step == total:
        host_state = dist_lib.to_host(state)  # a collective across processes
        if writer:
          ckpt.save(step, host_state, extra)
          export_optimizer(run_dir, lopt, state.meta_params, cfg, step, command, start_record)
  except KeyboardInterrupt:
    if (writer and jax.process_count() == 1 and step not in ckpt.all_steps()
        and step > (resumed_from or 0)):
      ckpt.save(step, state)
    ckpt.close()
    progress.close()
    logger.close()
    say(f"meta-train: interrupted at step {step}; checkpoint saved, re-run to resume")
    raise
  ckpt.close()
  progress.close()
  if writer:
    export_optimizer(run_dir, lopt, state.meta_params, cfg, step, command, start_record)
    write_meta_loss_figure(run_dir)
  eval_summary = None
  if cfg.eval.enabled and writer:
    eval_summary = run_evaluation(cfg, lopt, state.meta_params, family, run_dir)
    say(f"meta-train: evaluation report in {os.path.join(run_dir, 'eval.md')}")
    logger.summary({f"eval/{k}": v for k, v in eval_summary.items()
                    if isinstance(v, (int, float))})
  logger.close()
  dist_lib.barrier("meta-train-done")  # the others wait for process 0's export and eval
  say(f"meta-train: done, {step} outer steps; optimizer in "
      f"{os.path.join(run_dir, OPTIMIZER_FILE)}")
  return RunResult(state=state, step=step, resumed_from=resumed_from, run_dir=run_dir,
                   lopt=lopt, eval_summary=eval_summary)


def load_final_state(run_dir: str, cfg: config_lib.RunConfig | None = None):
  """``(step, state)`` of a run directory's newest intact checkpoint (for analysis and tests)."""
  run_dir = os.fspath(run_dir)
  if cfg is None:
    with open(os.path.join(run_dir, CONFIG_FILE), encoding="utf-8") as f:
      cfg = config_lib.from_json(f.read())
  trainer, _, _ = build_trainer(cfg)
  template = jax.eval_shape(trainer.init, jax.random.key(cfg.run.seed))
  ckpt = ckpt_lib.Checkpointer(os.path.join(run_dir, CHECKPOINT_DIR),
                               max_to_keep=cfg.run.max_to_keep)
  try:
    return ckpt.restore_latest(template)
  finally:
    ckpt.close()


__all__ = ["RunDirError", "RunResult", "build_outer_optimizer", "build_trainer",
           "export_optimizer", "load_final_state", "prepare_run_dir", "run",
           "run_evaluation"]
