"""The networks of the learned optimizers: the MLP rule's per-parameter network, in its two
compiled forms, and the one-hidden-layer scalar head of the schedule and the controller.

Both compute the same ReLU MLP elementwise over parameter-shaped arrays (up to float rounding
order); :class:`learned_opt.MLPOptimizer` picks one per tensor by size (``FUSE_MIN_SIZE``):

* :func:`fused_mlp` writes the whole network as unrolled scalar-weight arithmetic, which XLA
  compiles into one elementwise loop: no ``[N, features]`` or ``[N, hidden]`` array is ever
  materialised and the loop runs at the machine's FMA rate, at a compile cost of a few seconds
  per large tensor;
* :func:`matmul_mlp` uses matmuls on ``[N, width]`` (compiles instantly), for small tensors.

:func:`head` maps one feature vector to one scalar (:class:`learned_opt.LearnedSchedule`'s
log multiplier, :class:`learned_opt.TensorController`'s action); :func:`head_init` starts it
at exactly zero.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp


def fused_mlp(xs: Sequence[jax.Array], layers: Sequence[tuple[jax.Array, jax.Array]]):
  """A ReLU MLP applied elementwise, written as unrolled scalar-weight arithmetic.

  .. math::
    h^{(0)} = x,\\quad h^{(l+1)}_j = \\mathrm{relu}\\big(b_j + \\textstyle\\sum_i W_{ij} h^{(l)}_i\\big)

  (no ReLU after the last layer). Each ``h_j`` is an array shaped like the inputs, so XLA fuses
  the whole network into one elementwise loop.

  Args:
    xs: the input features, arrays of one common shape.
    layers: ``(W, b)`` per layer, ``W`` of shape ``(fan_in, fan_out)``.

  Returns:
    The list of output arrays (one per output unit).
  """
  h = list(xs)
  for depth, (w, b) in enumerate(layers):
    out = []
    for j in range(w.shape[1]):
      # Scalars are indexed from the whole matrix (not row by row) so that the fused loop
      # keeps few operands: LLVM's vectoriser gives up on loops with many pointer operands.
      acc = h[0] * w[0, j]
      for i in range(1, len(h)):
        acc = acc + h[i] * w[i, j]
      acc = acc + b[j]
      out.append(jax.nn.relu(acc) if depth < len(layers) - 1 else acc)
    h = out
  return h


def matmul_mlp(xs: Sequence[jax.Array], layers: Sequence[tuple[jax.Array, jax.Array]]):
  """The same network as :func:`fused_mlp` with matmuls on ``[n, width]``, for small tensors.

  The output layer (``fan_out = 2``) is written as unrolled multiply-adds on the columns of the
  last hidden layer: XLA fuses it with the step computation that consumes it, where a matmul
  with two output columns is a library call that costs more than the rest of the network at
  these sizes.
  """
  shape = xs[0].shape
  h = jnp.stack([x.reshape(-1) for x in xs], axis=-1)
  for w, b in layers[:-1]:
    h = jax.nn.relu(jnp.dot(h, w, precision=jax.lax.Precision.HIGHEST) + b)
  w, b = layers[-1]
  cols = [h[:, i] for i in range(w.shape[0])]
  return [functools.reduce(jnp.add, [c * w[i, j] for i, c in enumerate(cols)]).reshape(shape)
          + b[j] for j in range(w.shape[1])]


def check_hidden_size(hidden_size: Any) -> int:
  """Validates a head's hidden width; returns it.

  Raises:
    ValueError: unless it is an int >= 1 (a bool is not).
  """
  if not (isinstance(hidden_size, int) and not isinstance(hidden_size, bool)
          and hidden_size >= 1):
    raise ValueError(f"hidden_size must be an int >= 1, got {hidden_size!r}")
  return hidden_size


def head_shapes(fan_in: int, hidden_size: int) -> dict[str, tuple[int, ...]]:
  """The meta-parameter shapes of :func:`head`: ``w0 (F, H), b0 (H,), w1 (H, 1), b1 (1,)``."""
  return {"w0": (fan_in, hidden_size), "b0": (hidden_size,), "w1": (hidden_size, 1),
          "b1": (1,)}


def head_init(key: jax.Array, fan_in: int, hidden_size: int) -> dict[str, jax.Array]:
  """LeCun-normal ``w0``, zero ``b0`` and a zero output layer: the head starts at exactly 0."""
  return {"w0": jax.random.normal(key, (fan_in, hidden_size), jnp.float32) / math.sqrt(fan_in),
          "b0": jnp.zeros((hidden_size,), jnp.float32),
          "w1": jnp.zeros((hidden_size, 1), jnp.float32), "b1": jnp.zeros((1,), jnp.float32)}


def head(meta_params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  """The scalar ``W_1^T relu(W_0^T x + b_0) + b_1``, in the wider of float32 and ``w0``'s type
  (float64 meta-parameters: in float64)."""
  w0 = meta_params["w0"]
  dtype = jnp.promote_types(w0.dtype, jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  h = jax.nn.relu(jnp.dot(x.astype(dtype), w0.astype(dtype), precision=hi) + meta_params["b0"])
  return jnp.dot(h, meta_params["w1"].astype(dtype), precision=hi)[0] + meta_params["b1"][0]
