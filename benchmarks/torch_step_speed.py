"""Time one ``learned_opt.torch.LearnedOptimizer`` step against ``torch.optim.Adam``'s.

The parameters are the ~1M-parameter MLP-shaped set of ``benchmarks/step_speed.py`` (weights
1000x768, 768x300, 300x10 and their biases, float32) with fixed random gradients. Each
optimizer's ``step()`` is warmed up and then timed ``--repeats`` times, Adam and the learned
optimizers interleaved round by round in the same process, so the ratio is robust to other
load on the machine. Prints a table: optimizer, median ms/step, ratio to Adam, state bytes per
parameter.

Run from the repository root::

  python -m benchmarks.torch_step_speed                     # shipped files + random adafactor_mlp
  python -m benchmarks.torch_step_speed --threads 1 --repeats 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

import learned_opt
from learned_opt.torch import LearnedOptimizer

SHAPES = {"w0": (1000, 768), "b0": (768,), "w1": (768, 300), "b1": (300,), "w2": (300, 10),
          "b2": (10,)}


def make_params(seed: int = 0) -> list[torch.Tensor]:
  """The benchmark's parameters (float32, ~1M) with fixed random gradients attached."""
  gen = torch.Generator().manual_seed(seed)
  params = []
  for shape in SHAPES.values():
    p = (0.05 * torch.randn(shape, generator=gen)).requires_grad_()
    p.grad = 0.01 * torch.randn(shape, generator=gen)
    params.append(p)
  return params


def state_bytes(opt: torch.optim.Optimizer) -> int:
  """Bytes of the tensors an optimizer holds per parameter tensor (its statistics)."""
  return sum(v.numel() * v.element_size() for s in opt.state.values() if isinstance(s, dict)
             for v in s.values() if torch.is_tensor(v) and v.ndim > 0)


def adafactor_file(directory: str) -> str:
  """An ``adafactor_mlp`` file with fresh meta-parameters (the architecture's default)."""
  import jax  # pylint: disable=import-outside-toplevel  # only to write the file
  lopt = learned_opt.AdafactorMLPOptimizer()
  path = os.path.join(directory, "adafactor_mlp.safetensors")
  learned_opt.save(path, lopt, lopt.init(jax.random.key(0)))
  return path


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
  args = parser.parse_args(argv)
  if args.threads:
    torch.set_num_threads(args.threads)
  n = sum(torch.Size(s).numel() for s in SHAPES.values())
  with tempfile.TemporaryDirectory() as tmp:
    candidates = {f"learned {name}": (lambda ps, name=name: LearnedOptimizer(
        ps, name, num_steps=10_000)) for name in learned_opt.list_pretrained()}
    ada = adafactor_file(tmp)
    candidates["learned adafactor_mlp (random)"] = lambda ps: LearnedOptimizer(ps, ada)
    candidates = {"torch.optim.Adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
                  **candidates}
    opts = {name: make(make_params()) for name, make in candidates.items()}
    times: dict[str, list[float]] = {name: [] for name in opts}
    for name, opt in opts.items():  # warm-up (state allocation)
      opt.step()
    for _ in range(args.repeats):
      for name, opt in opts.items():
        t0 = time.perf_counter()
        opt.step()
        times[name].append(time.perf_counter() - t0)
  adam = statistics.median(times["torch.optim.Adam"])
  print(f"{n:,} parameters, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} steps")
  print(f"{'optimizer':34s} {'ms/step':>9s} {'x Adam':>7s} {'state B/param':>14s}")
  for name, opt in opts.items():
    ms = statistics.median(times[name])
    print(f"{name:34s} {1e3 * ms:9.2f} {ms / adam:7.1f} {state_bytes(opt) / n:14.1f}")


if __name__ == "__main__":
  main()
