"""Weak scaling of meta-training over devices: particles grow with the device count.

For each family (the digits MLP classifier family and a diffusion family) and each device count
``D`` the benchmark meta-trains with PES, ``pairs_per_device * D`` antithetic pairs sharded over
a ``D``-device mesh (:mod:`meta_train.runtime.sharding`), and reports the steady-state inner
steps per second, in total and per device, and the ratio of both to the 1-device run of the
same session.

* CPU (default): ``D`` in 1, 2, 4, 8 forced host devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=8``, set here before jax is imported).
  Forced devices share the machine's cores, so the ideal here is a *total* rate that stays
  flat (ratio 1.0) while per-device rates fall as ``1/D``: the table measures what sharding
  costs (partitioning, the all-reduce, per-device dispatch), not a speed-up.
* ``--gpu``: ``D`` in 1, 2, 4, ... up to the visible GPUs, then the same configuration on one
  CPU device, printing the GPU/CPU ratio. On real devices the ideal is a flat *per-device* rate.

Run::

  python benchmarks/scaling.py [--families digits_mlp diffusion_toy2d] [--devices 1 2 4 8]
      [--pairs-per-device 2] [--seconds 2] [--windows 3] [--gpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its sibling, also under -m
import trainer_timing  # pylint: disable=wrong-import-position

TRUNCATION, HORIZON, STEPS_PER_DISPATCH = 10, 100, 5


def _force_cpu_devices(n: int) -> None:
  if "jax" in sys.modules:
    raise RuntimeError("set XLA_FLAGS before jax is imported")
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def measure(family_name: str, devices, pairs: int, seconds: float, windows: int):
  """``(compile_s, median inner steps/s)`` of PES with ``pairs`` pairs over ``devices``."""
  import jax  # pylint: disable=import-outside-toplevel
  with jax.default_device(devices[0]):  # the family's data on the measured platform
    return _measure(family_name, devices, pairs, seconds, windows)


def _measure(family_name, devices, pairs, seconds, windows):
  import jax  # pylint: disable=import-outside-toplevel
  import learned_opt  # pylint: disable=import-outside-toplevel
  import tasks  # pylint: disable=import-outside-toplevel
  from meta_train import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
  from meta_train.estimators import registry  # pylint: disable=import-outside-toplevel
  from meta_train.runtime import sharding  # pylint: disable=import-outside-toplevel

  mesh = sharding.make_mesh(len(devices), devices=devices)
  est = registry.make_estimator("pes", learned_opt.MLPOptimizer(), tasks.get(family_name),
                                num_pairs=pairs, truncation_length=TRUNCATION,
                                min_horizon=HORIZON, max_horizon=HORIZON)
  trainer = trainer_lib.MetaTrainer(est, steps_per_dispatch=STEPS_PER_DISPATCH, mesh=mesh)
  compile_s, rates, _ = trainer_timing.time_dispatches(trainer, seconds, windows)
  return compile_s, statistics.median(rates)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--families", nargs="+", default=["digits_mlp", "diffusion_toy2d"])
  parser.add_argument("--devices", nargs="+", type=int, default=None,
                      help="device counts (default: 1 2 4 8 on CPU, powers of 2 on GPU)")
  parser.add_argument("--pairs-per-device", type=int, default=2)
  parser.add_argument("--seconds", type=float, default=2.0, help="length of a timing window")
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--gpu", action="store_true", help="scale over GPUs; compare to 1 CPU")
  args = parser.parse_args(argv)
  counts = args.devices or [1, 2, 4, 8]
  if not args.gpu:
    _force_cpu_devices(max(counts))
  import jax  # pylint: disable=import-outside-toplevel

  if args.gpu:
    try:
      pool = jax.devices("gpu")
    except RuntimeError as e:
      sys.exit(f"scaling.py --gpu: no GPU visible to jax ({e})")
    counts = args.devices or [2**i for i in range(8) if 2**i <= len(pool)]
  else:
    pool = jax.devices("cpu")
  counts = [d for d in counts if d <= len(pool)]
  kind = pool[0].device_kind
  print(f"jax {jax.__version__}; {len(pool)} x {pool[0].platform} ({kind}); PES, "
        f"{args.pairs_per_device} pairs per device, truncation {TRUNCATION}, horizon {HORIZON}, "
        f"MLPOptimizer, {STEPS_PER_DISPATCH} outer steps per dispatch; "
        f"{time.strftime('%Y-%m-%d')}")
  header = (f"{'family':<16} {'devices':>7} {'pairs':>5} {'compile s':>9} "
            f"{'inner steps/s':>13} {'per device':>10} {'total x1':>8} {'per-dev x1':>10}")
  print(header)
  print("-" * len(header))
  for name in args.families:
    base = None
    for d in counts:
      pairs = args.pairs_per_device * d
      compile_s, rate = measure(name, pool[:d], pairs, args.seconds, args.windows)
      base = rate if base is None else base
      print(f"{name:<16} {d:>7} {pairs:>5} {compile_s:>9.1f} {rate:>13,.0f} {rate / d:>10,.0f} "
            f"{rate / base:>8.2f} {rate / d / base:>10.2f}", flush=True)
    if args.gpu:
      cpu = jax.devices("cpu")[:1]
      _, cpu_rate = measure(name, cpu, args.pairs_per_device, args.seconds, args.windows)
      print(f"{name:<16} {'1 cpu':>7} {args.pairs_per_device:>5} {'':>9} {cpu_rate:>13,.0f}"
            f"   GPU/CPU (1 device each): {base / cpu_rate:.1f}x", flush=True)
  print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
  main()
