"""``meta-eval``: evaluate learned optimizers against tuned Adam baselines on held-out tasks.

Example::

  meta-eval pretrained:default --suite in_distribution --out reports/default/in_distribution
  meta-eval runs/qs/optimizer.safetensors --family digits_conv lm_transformer_tiny --out /tmp/e

Errors (unknown suite or family, missing or malformed optimizer file, unknown pretrained
name) print one line naming the bad value and the valid choices, exit with status 2 and write
nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import shlex
import sys
import time
from typing import Sequence

from meta_train.evaluation import config as config_lib

LONG_HORIZON_TASKS, LONG_HORIZON_SEEDS = 8, 2
WANDB_MODES = ("offline", "online", "disabled")


class _Parser(argparse.ArgumentParser):
  """Usage errors as one line (``meta-eval: error: ...``), exit status 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
  suites_help = (
      "in_distribution: held-out tasks of the optimizer's training family (from its file's "
      "provenance); out_of_distribution: the registered families absent from its training "
      "set (a mixture's members count as trained; lm_transformer_small left out); "
      "long_horizon: the training family (or --family's) at 10x the meta-training horizon, "
      "against tuned "
      f"constant Adam of the same length (defaults to {LONG_HORIZON_TASKS} tasks x "
      f"{LONG_HORIZON_SEEDS} seeds to keep its time sane)")
  p = _Parser(
      prog="meta-eval",
      description="Evaluate learned optimizers against tuned Adam and tuned warm-up + cosine "
                  "Adam on held-out tasks; writes DIR/eval.json, DIR/eval.md and PNG figures "
                  "and prints the headline table.",
      epilog=f"Suites: {', '.join(config_lib.SUITES)}. " + suites_help + ".")
  p.add_argument("optimizers", nargs="+", metavar="OPTIMIZER",
                 help="a .safetensors file written by learned_opt.save, or pretrained:NAME")
  p.add_argument("--suite", metavar="SUITE",
                 help=f"one of {', '.join(config_lib.SUITES)}")
  p.add_argument("--family", nargs="+", metavar="NAME",
                 help="registered task families, or package.module:function import paths "
                      "(with --suite long_horizon: these families instead of the training "
                      "family, at 10x its horizon)")
  p.add_argument("--out", required=True, metavar="DIR", help="report directory")
  p.add_argument("--num-tasks", type=int, metavar="N",
                 help=f"held-out tasks per family (default {config_lib.EvalConfig.num_tasks}; "
                      f"long_horizon {LONG_HORIZON_TASKS})")
  p.add_argument("--num-seeds", type=int, metavar="N",
                 help=f"seeds per task (default {config_lib.EvalConfig.num_seeds}; "
                      f"long_horizon {LONG_HORIZON_SEEDS})")
  p.add_argument("--num-steps", type=int, metavar="N",
                 help=f"inner steps per run (default {config_lib.EvalConfig.num_steps}; "
                      "long_horizon: 10x the training horizon)")
  p.add_argument("--wandb", default="disabled", metavar="MODE",
                 help=f"one of {', '.join(WANDB_MODES)} (default disabled)")
  p.add_argument("--cache-dir", metavar="DIR",
                 help="baseline-curve cache (default $LEARNED_OPT_CACHE_DIR or "
                      "~/.cache/learned_opt/meta_eval)")
  p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
  p.add_argument("--seed", type=int, default=0, help="root seed of the held-out draws")
  p.add_argument("--draws", default="dev", metavar="STREAM",
                 help="held-out stream: dev (recipe work tunes on it; the default) or report "
                      "(committed reports and the README only)")
  p.add_argument("--baselines", default=",".join(config_lib.BASELINES), metavar="A,B,...",
                 help="tuned baselines to compare with (default: all: "
                      f"{','.join(config_lib.BASELINES)}; long_horizon: adam)")
  return p


class _Stderr(logging.Handler):
  """Writes each record to the current ``sys.stderr`` (looked up at every line)."""

  def emit(self, record: logging.LogRecord) -> None:
    print(self.format(record), file=sys.stderr, flush=True)


def _log_grids_to_stderr() -> None:
  """Progress on stderr (``baselines.LOG``), once: a line as each baseline grid that runs and
  each group of the learned optimizer's runs starts, and one when it is done."""
  from meta_train.evaluation import baselines  # pylint: disable=import-outside-toplevel
  if not any(isinstance(h, _Stderr) for h in baselines.LOG.handlers):
    baselines.LOG.addHandler(_Stderr())
  baselines.LOG.setLevel(logging.INFO)
  baselines.LOG.propagate = False  # once, even where a library has configured the root logger


def _fail(message: str) -> int:
  print(f"meta-eval: error: {message}", file=sys.stderr)
  return 2


def _out_dir_problem(path: str) -> str | None:
  """Why ``path`` cannot be a report directory, or None (checked before any evaluation)."""
  if os.path.exists(path) and not os.path.isdir(path):
    return f"--out {path!r} exists and is not a directory"
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(os.path.abspath(parent))
  if not os.access(parent, os.W_OK | os.X_OK):
    return f"--out {path!r} is not writable ({parent!r} is not)"
  return None


def command_line(argv: Sequence[str]) -> str:
  """The command as a report records it: paths under the working directory made relative, and
  ``--cache-dir`` left out (where a cache lives changes no number; reports are committed)."""
  out, skip = [], False
  cwd = os.getcwd()
  for a in argv:
    if skip:
      skip = False
      continue
    if a == "--cache-dir":
      skip = True
      continue
    if a.startswith("--cache-dir="):
      continue
    if os.path.isabs(a) and os.path.commonpath([cwd, os.path.abspath(a)]) == cwd:
      a = os.path.relpath(a, cwd)
    out.append(shlex.quote(a))
  return "meta-eval " + " ".join(out)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  # Everything is validated before anything is computed or written.
  if args.suite is None and not args.family:
    return _fail("name what to evaluate: --suite SUITE or --family NAME [NAME ...]")
  if args.suite is not None and args.suite not in config_lib.SUITES:
    return _fail(f"unknown suite {args.suite!r}; valid: {', '.join(config_lib.SUITES)}")
  if args.suite not in (None, "long_horizon") and args.family:
    return _fail(f"--family with --suite {args.suite}: the suite names its own families; only "
                 f"long_horizon takes --family (those families at 10x the training horizon)")
  if args.wandb not in WANDB_MODES:
    return _fail(f"unknown --wandb mode {args.wandb!r}; valid: {', '.join(WANDB_MODES)}")
  for flag in ("num_tasks", "num_seeds", "num_steps"):
    value = getattr(args, flag)
    if value is not None and value <= 0:
      return _fail(f"--{flag.replace('_', '-')} must be a positive int, got {value}")
  if args.draws not in config_lib.DRAWS:
    return _fail(f"unknown --draws {args.draws!r}; valid: {', '.join(config_lib.DRAWS)}")
  baselines = tuple(b for b in args.baselines.split(",") if b)
  bad = [b for b in baselines if b not in config_lib.BASELINES]
  if bad or not baselines:
    return _fail(f"unknown baseline {bad[0] if bad else args.baselines!r}; valid: "
                 f"{', '.join(config_lib.BASELINES)}")
  problem = _out_dir_problem(args.out)
  if problem:
    return _fail(problem)
  # Heavy imports only after the cheap checks.
  from meta_train.evaluation import cache as cache_lib  # pylint: disable=import-outside-toplevel
  from meta_train.evaluation import figures, report, runner, suites  # pylint: disable=import-outside-toplevel
  if args.family:
    try:
      suites.check_families(args.family)
    except suites.EvalError as e:
      return _fail(str(e))
  long = args.suite == "long_horizon"
  config = config_lib.EvalConfig(
      num_tasks=args.num_tasks or (LONG_HORIZON_TASKS if long else config_lib.EvalConfig.num_tasks),
      num_seeds=args.num_seeds or (LONG_HORIZON_SEEDS if long else config_lib.EvalConfig.num_seeds),
      num_steps=args.num_steps or config_lib.EvalConfig.num_steps, seed=args.seed,
      draws=args.draws)
  try:
    optimizers = [suites.load_optimizer(spec) for spec in args.optimizers]
    if args.suite:
      plans = {o.label: suites.plan(args.suite, o, config, baselines, families=args.family)
               for o in optimizers}
      if long and args.num_steps:
        plans = {k: [dataclasses.replace(p, num_steps=args.num_steps) for p in v]
                 for k, v in plans.items()}
      # Built before any compute: a training family given by an import path that cannot be
      # imported here fails now, in one line.
      built = {(o.label, p.family): suites.build_family(p.family, o)
               for o in optimizers for p in plans[o.label]}
  except suites.EvalError as e:
    return _fail(str(e))

  suite = args.suite or "families"
  cache = cache_lib.CurveCache(None if args.no_cache else (args.cache_dir or
                                                            cache_lib.default_dir()))
  say = lambda m: print(m, file=sys.stderr, flush=True)
  _log_grids_to_stderr()
  t0 = time.perf_counter()
  all_results, entries = [], []
  for opt in optimizers:
    if args.suite:
      results = []
      for p in plans[opt.label]:
        say(f"meta-eval: {opt.label} on {p.family} ({suite}, {config.num_tasks} tasks x "
            f"{config.num_seeds} seeds, {p.num_steps} steps)")
        r = runner.evaluate_family(opt.lopt, opt.meta_params, built[opt.label, p.family],
                                   p.family, config, label=opt.label, suite=suite, num_steps=p.num_steps,
                                   baselines=p.baselines, envelope_factor=p.envelope_factor,
                                   cache=cache, samples=args.wandb != "disabled",
                                   horizon_aware=opt.horizon_aware)
        say(f"meta-eval:   {r.seconds:.0f}s")
        results.append(r)
    else:
      results = runner.evaluate_suite(opt, suite, config, cache=cache, families=args.family,
                                      baselines=baselines, log=say,
                                      samples=args.wandb != "disabled")
    all_results.append((opt, results))
    for r in results:
      entries.extend(r.entries)

  os.makedirs(args.out, exist_ok=True)
  figs = []
  for opt, results in all_results:
    figs.append(figures.curves_figure(
        results, os.path.join(args.out, f"curves_{suite}_{report.slug(opt.label)}.png"),
        f"{opt.label}: {suite} (mean train loss over held-out runs)"))
  figs.append(figures.speedup_strip([e for e in entries if e.get("role") != "calibration"
                                     or e["optimizer"] == "tuned adam"], os.path.join(args.out, f"speedup_{suite}.png"),
                                    f"{suite}: steps-to-reach speed-up per run"))
  import jax  # pylint: disable=import-outside-toplevel
  meta = {
      "command": command_line(argv),
      "config": dataclasses.asdict(config),
      "jax": jax.__version__, "platform": platform.platform(),
      "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
      "load_average": [round(x, 2) for x in os.getloadavg()],
      "seconds": round(time.perf_counter() - t0, 1),
      # No path of this machine: reports are committed.
      "cache": {"enabled": cache.dir is not None, "hits": cache.hits, "misses": cache.misses},
      "seconds_per_family": {f"{o.label} {r.entries[0]['family']}": round(r.seconds, 1)
                             for o, rs in all_results for r in rs},
      "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
  }
  if args.wandb != "disabled":
    from meta_train.evaluation import wandb_log  # pylint: disable=import-outside-toplevel
    wandb_log.log(args.out, args.wandb, all_results, entries, meta)
  paths = report.write(args.out, entries, meta, figs)
  print(report.text_table(entries), end="")
  say(f"meta-eval: report in {paths['md']} ({meta['seconds']:.0f}s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
