"""The ``meta-train`` command: meta-train a learned optimizer from a preset plus overrides.

Usage::

  meta-train --preset smoke --run-dir runs/smoke
  meta-train --preset quickstart --run-dir runs/qs estimator.num_pairs=8 --set outer.lr=3e-3
  meta-train --preset default --run-dir runs/default --wandb online

Every config field can be overridden as ``field.path=value`` (positional or ``--set``);
``meta-train --help`` lists them all with their defaults. Re-running with the same
``--run-dir`` resumes from the newest intact checkpoint.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Sequence

from meta_train import config as config_lib
from meta_train.runtime import distributed as dist_lib

EXIT_CONFIG_ERROR = 2


def _fields_help() -> str:
  rows = config_lib.fields_table()
  width = max(len(f"{p} ({t})") for p, t, _, _ in rows)
  lines = ["config fields (override with field.path=value; defaults of RunConfig()):"]
  section = None
  for path, tname, value, text in rows:
    head = path.split(".")[0]
    if head != section:
      section = head
      lines.append(f"  [{head}]")
    shown = repr(value) if not isinstance(value, str) else value
    lines.append(f"    {f'{path} ({tname})':<{width}}  = {shown}   {text}")
  lines.append("")
  lines.append("  optimizer.kwargs.NAME / task.kwargs.NAME set one field of the architecture's /")
  lines.append("  family's dataclass (typed by it), e.g. optimizer.kwargs.hidden_size=8.")
  lines.append("")
  lines.append("presets (values that differ from the defaults above):")
  base = config_lib.RunConfig()
  for name, cfg in config_lib.PRESETS.items():
    diffs = ", ".join(f"{p}={b}" for p, _, b in config_lib.diff(base, cfg))
    lines.append(f"  {name}: {diffs}")
  return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
  """The argparse parser of ``meta-train`` (help generated from the config dataclasses)."""
  parser = argparse.ArgumentParser(
      prog="meta-train",
      description="Meta-train a learned optimizer (JAX). Resumes when --run-dir holds a run.",
      epilog=_fields_help(),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="default", choices=sorted(config_lib.PRESETS),
                      help="named starting config (default: %(default)s)")
  parser.add_argument("--run-dir", default=None,
                      help="run directory (default: runs/<preset>); resumed if it holds a run")
  parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                      help="override one config field (repeatable)")
  parser.add_argument("--wandb", choices=("offline", "online", "disabled"), default=None,
                      help="wandb mode (same as wandb.mode=...; default: the config's, offline)")
  parser.add_argument("--print-config", action="store_true",
                      help="print the resolved config as JSON and exit (nothing is compiled)")
  parser.add_argument("overrides", nargs="*", metavar="FIELD=VALUE",
                      help="config overrides, e.g. estimator.num_pairs=4")
  dist_lib.add_arguments(parser)  # distributed hook: --coordinator, --num-processes, ...
  return parser


def resolve_args(args: argparse.Namespace) -> config_lib.Built:
  """The validated config described by parsed command-line arguments, with its objects built.

  The learned optimizer, task family and estimator are built here, once; the run uses them.
  """
  overrides = list(args.overrides) + list(args.sets)
  if args.wandb is not None:
    overrides.append(f"wandb.mode={args.wandb}")
  return config_lib.build(config_lib.apply_overrides(config_lib.preset(args.preset), overrides))


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the ``meta-train`` console script; returns the exit status."""
  parser = build_parser()
  args = parser.parse_args(argv)
  try:  # distributed hook: join a multi-process run before JAX touches a device
    if not args.print_config:
      dist_lib.join_from_args(args)
  except dist_lib.DistributedError as e:
    parser.exit(EXIT_CONFIG_ERROR, f"meta-train: error: {e}\n")
  try:
    built = resolve_args(args)
  except config_lib.ConfigError as e:
    parser.exit(EXIT_CONFIG_ERROR, f"meta-train: config error: {e}\n")
  if args.print_config:
    sys.stdout.write(config_lib.to_json(built.cfg))
    return 0
  run_dir = args.run_dir or os.path.join("runs", args.preset)
  from meta_train.runtime import run as run_lib  # pylint: disable=import-outside-toplevel
  try:
    with dist_lib.exit_on_peer_failure(  # distributed hook: no hang on a dead peer
        run_dir, passthrough=(config_lib.ConfigError, run_lib.RunDirError)):
      command = shlex.join(["meta-train", *(sys.argv[1:] if argv is None else argv)])
      run_lib.run(built, run_dir, command=command)
  except (config_lib.ConfigError, run_lib.RunDirError) as e:
    parser.exit(EXIT_CONFIG_ERROR, f"meta-train: error: {e}\n")
  except KeyboardInterrupt:
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
