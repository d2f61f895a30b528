"""Time one jitted optimizer step of every registered learned optimizer against optax.adam.

The model is a ~1M-parameter MLP-shaped pytree (weights 1000x768, 768x300, 300x10 and their
biases, float32). For each architecture in ``learned_opt.registry()`` (default config, fresh
meta-parameters) one jitted ``update`` (features + network + step, state in and out) is warmed
up and then timed ``--repeats`` times with ``block_until_ready``; ``optax.adam`` is timed the
same way in the same process, interleaved round by round, so the ratio is robust to other load
on the machine. Prints a table: architecture, compile seconds, median ms/step, ratio to Adam,
optimizer-state bytes per parameter.

Run from the repository root (or anywhere once the package is installed)::

  python -m benchmarks.step_speed                 # every registered architecture
  python -m benchmarks.step_speed --arch mlp adam --repeats 30
  python -m benchmarks.step_speed --arch mlp mlp+orthogonalize   # a chain: parts joined by +

The step of a compute-bound optimizer is stretched far more than Adam's short, memory-bound
step when other processes share the cores: compare ratios taken on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import learned_opt

SHAPES = {"w0": (1000, 768), "b0": (768,), "w1": (768, 300), "b1": (300,), "w2": (300, 10),
          "b2": (10,)}


def make_params(key: jax.Array) -> dict[str, jax.Array]:
  """The benchmark's parameter tree (float32, ~1M parameters)."""
  keys = jax.random.split(key, len(SHAPES))
  return {n: 0.05 * jax.random.normal(k, s, jnp.float32) for (n, s), k in zip(SHAPES.items(), keys)}


def state_bytes(state) -> int:
  """Total bytes of the array leaves of an optimizer state."""
  return sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))


def build_step(tx: optax.GradientTransformation, params):
  """A jitted ``(grads, state, params) -> (updates, state)`` and its initial state."""
  state = tx.init(params)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  return step, state


def time_once(step, grads, state, params) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(step(grads, state, params))
  return time.perf_counter() - t0


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arch", nargs="*", default=None,
                      help="architectures to time (default: every registered one); "
                           "a+b times learned_opt.chain(a(), b())")
  parser.add_argument("--repeats", type=int, default=20, help="timed steps per optimizer")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  args = parser.parse_args(argv)

  registry = learned_opt.registry()
  names = args.arch or sorted(registry)
  unknown = sorted({part for name in names for part in name.split("+")} - set(registry))
  if unknown:
    parser.error(f"unknown architectures {unknown}; registered: {sorted(registry)}")

  key = jax.random.key(0)
  params = make_params(key)
  grads = make_params(jax.random.key(1))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f"{n_params:,} parameters in {len(SHAPES)} tensors, backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s)")

  candidates = {"optax.adam": optax.adam(1e-3)}
  for name in names:
    parts = [registry[part]() for part in name.split("+")]
    lopt = parts[0] if len(parts) == 1 else learned_opt.chain(*parts)
    candidates[name] = lopt.transform(lopt.init(key))

  compiled, compile_s, nbytes = {}, {}, {}
  for name, tx in candidates.items():
    step, state = build_step(tx, params)
    t0 = time.perf_counter()
    jax.block_until_ready(step(grads, state, params))
    compile_s[name] = time.perf_counter() - t0
    for _ in range(args.warmup):
      jax.block_until_ready(step(grads, state, params))
    compiled[name] = (step, state)
    nbytes[name] = state_bytes(state)

  # Interleave the optimizers round by round so that load from other processes hits all alike.
  times = {name: [] for name in candidates}
  for _ in range(args.repeats):
    for name, (step, state) in compiled.items():
      times[name].append(time_once(step, grads, state, params))

  adam_ms = 1e3 * float(np.median(times["optax.adam"]))
  width = max(16, *(len(name) for name in candidates))
  header = f"{'architecture':<{width}} {'compile s':>9} {'ms/step':>9} {'x adam':>8} {'state B/param':>13}"
  print(header)
  print("-" * len(header))
  for name in candidates:
    ms = 1e3 * float(np.median(times[name]))
    print(f"{name:<{width}} {compile_s[name]:9.2f} {ms:9.2f} {ms / adam_ms:8.1f} "
          f"{nbytes[name] / n_params:13.2f}")


if __name__ == "__main__":
  main()
