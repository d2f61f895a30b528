"""Meta-training speed: inner steps per second of whole outer steps (estimate + outer update).

Configurations (PES, 8 antithetic pairs = 16 inner runs, truncation 20, horizon 100, the
default ``learned_opt.MLPOptimizer``):

* ``quadratic``: a 10-dimensional :class:`tasks.QuadraticFamily`;
* ``digits_mlp``: the registered digits MLP classifier family (skipped if absent).

Each row is also timed with ``learned_opt.SGDMomentum`` in the same process (the framework's
floor: same unrolls, estimator and tasks, a two-number optimizer); ``vs sgdm`` is the ratio of
the MLP optimizer's rate to it, which is stable under machine load where raw rates are not.

For each configuration and each ``steps_per_dispatch`` the first call (compilation + one
dispatch) is timed apart from the steady state, which is the median over repeated timing
windows of ``inner steps / wall seconds``. On a shared machine the wall rate depends on the
other load, so the rate per CPU-second of this process (``time.process_time``) is printed too;
on an idle machine the two agree up to XLA's own threading.

Run::

  python benchmarks/meta_train_speed.py [--families quadratic digits_mlp] [--dispatch 1 10 50]
      [--seconds 2] [--windows 5] [--no-baseline]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import jax

import learned_opt
import tasks
from meta_train.estimators.registry import make_estimator
from meta_train.trainer import MetaTrainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its sibling, also under -m
import trainer_timing  # pylint: disable=wrong-import-position

NUM_PAIRS, TRUNCATION_LENGTH, HORIZON = 8, 20, 100


def build_family(name: str):
  if name == "quadratic":
    return tasks.QuadraticFamily(dim=10)
  if name not in tasks.family_names():
    return None
  return tasks.get(name)


def measure(family, steps_per_dispatch: int, min_seconds: float, windows: int, lopt=None):
  """Returns ``(compile_seconds, [inner steps/s per window], [per CPU-s], outer steps/s)``."""
  lopt = learned_opt.MLPOptimizer() if lopt is None else lopt
  est = make_estimator("pes", lopt, family, num_pairs=NUM_PAIRS,
                       truncation_length=TRUNCATION_LENGTH, min_horizon=HORIZON,
                       max_horizon=HORIZON, sigma=0.01)
  trainer = MetaTrainer(est, steps_per_dispatch=steps_per_dispatch)
  compile_s, rates, cpu_rates = trainer_timing.time_dispatches(trainer, min_seconds, windows)
  return (compile_s, rates, cpu_rates,
          statistics.median(rates) / (2 * NUM_PAIRS * TRUNCATION_LENGTH))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--families", nargs="+", default=["quadratic", "digits_mlp"])
  parser.add_argument("--dispatch", nargs="+", type=int, default=[1, 10, 50])
  parser.add_argument("--seconds", type=float, default=2.0, help="length of a timing window")
  parser.add_argument("--windows", type=int, default=5)
  parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                      help="skip the SGDMomentum reference timing")
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; PES {NUM_PAIRS} pairs, "
        f"truncation_length {TRUNCATION_LENGTH}, horizon {HORIZON}, MLPOptimizer")
  header = (f"{'family':<12} {'dispatch':>8} {'compile s':>10} {'inner steps/s':>14} "
            f"{'min..max':>21} {'per CPU-s':>10} {'outer steps/s':>13} {'vs sgdm':>8}")
  print(header)
  print("-" * len(header))
  for name in args.families:
    family = build_family(name)
    if family is None:
      print(f"{name:<12} skipped: family not registered")
      continue
    for spd in args.dispatch:
      compile_s, rates, cpu_rates, outer = measure(family, spd, args.seconds, args.windows)
      ratio = ""
      if args.baseline:
        base = measure(family, spd, args.seconds, args.windows, learned_opt.SGDMomentum())[1]
        ratio = f"{statistics.median(rates) / statistics.median(base):>8.2f}"
      print(f"{name:<12} {spd:>8} {compile_s:>10.2f} {statistics.median(rates):>14,.0f} "
            f"{min(rates):>10,.0f}..{max(rates):<10,.0f} {statistics.median(cpu_rates):>10,.0f} "
            f"{outer:>13,.1f} {ratio}", flush=True)
  print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
  main()
