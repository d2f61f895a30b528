"""Joining a multi-process (multi-host) run with JAX's own runtime, ``jax.distributed``.

Every process runs the same ``meta-train`` command; :func:`initialize` connects it to the
others through JAX's coordination service before any JAX computation, after which
``jax.devices()`` lists every process's devices and the particle mesh
(:mod:`meta_train.runtime.sharding`) spans them all. Cross-process collectives go through XLA:
NCCL on GPUs, ICI/DCN on TPUs, and gloo over TCP on CPUs (``jax_cpu_collectives_implementation``,
``"gloo"`` by default in jax 0.10). There is no RPC of our own.

Where the process layout comes from (first match wins, see :func:`resolve_spec`):

1. ``--coordinator HOST:PORT --num-processes N --process-id I`` on the command line;
2. ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` in the environment;
3. a SLURM step with more than one task (``srun``): ``jax.distributed.initialize()`` reads
   ``SLURM_*`` itself;
4. ``--distributed``: ``jax.distributed.initialize()`` with no arguments, letting JAX detect the
   cluster (Cloud TPU pod slices, SLURM, Open MPI);

otherwise the run is a single process.

Failure handling: the coordination service marks a process dead when it sends no heartbeat for
``heartbeat_timeout_s`` and then terminates every other process; a collective with a dead peer
fails at once on CPU (gloo: "connection closed by peer"). :func:`exit_on_peer_failure` turns
such a failure into one clear line and a non-zero exit (:data:`EXIT_PEER_LOST`) without waiting
for JAX's shutdown barrier, so a run never hangs longer than the heartbeat timeout. Rerunning
the same command on every host resumes from the run directory's newest checkpoint.

Only process 0 writes (:func:`is_writer`): checkpoints, the exported optimizer, metrics, wandb,
the evaluation report. Every process reads the run directory (a shared filesystem) to resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Any, Iterator, Mapping, TextIO

import jax
import numpy as np

EXIT_PEER_LOST = 3
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


class DistributedError(RuntimeError):
  """A multi-process run could not be set up (bad flags/environment, or no coordinator)."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """How this process joins a multi-process run.

  Attributes:
    coordinator: ``HOST:PORT`` of process 0's coordination service (None: let JAX detect).
    num_processes: total processes (None: let JAX detect).
    process_id: this process's index in ``[0, num_processes)`` (None: let JAX detect).
    source: where the layout came from: ``"flags"``, ``"env"``, ``"slurm"`` or ``"auto"``.
    heartbeat_timeout_s: a process silent this long is declared dead and the run stops.
    init_timeout_s: how long to wait for all processes to connect.
    shutdown_timeout_s: how long a finishing process waits for the others at exit.
  """

  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  source: str = "flags"
  heartbeat_timeout_s: int = 60
  init_timeout_s: int = 300
  shutdown_timeout_s: int = 120


def _int(value: Any, name: str) -> int | None:
  if value is None or value == "":
    return None
  try:
    return int(value)
  except (TypeError, ValueError):
    raise DistributedError(f"{name} must be an integer, got {value!r}") from None


def resolve_spec(coordinator: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None, *, auto: bool = False,
                 environ: Mapping[str, str] | None = None, **timeouts: int) -> ClusterSpec | None:
  """The :class:`ClusterSpec` described by flags and environment, or None for one process.

  Args:
    coordinator: ``--coordinator HOST:PORT``.
    num_processes: ``--num-processes N``.
    process_id: ``--process-id I``.
    auto: ``--distributed``: let ``jax.distributed.initialize()`` detect the cluster.
    environ: the environment (default ``os.environ``).
    **timeouts: ``heartbeat_timeout_s``, ``init_timeout_s``, ``shutdown_timeout_s``.

  Returns:
    A spec, or None when nothing asks for more than one process.

  Raises:
    DistributedError: an incomplete or inconsistent layout, naming the flag or variable.
  """
  env = os.environ if environ is None else environ
  timeouts = {k: v for k, v in timeouts.items() if v is not None}
  for k, v in timeouts.items():
    if k not in ("heartbeat_timeout_s", "init_timeout_s", "shutdown_timeout_s"):
      raise TypeError(f"unknown timeout {k!r}")
    if not isinstance(v, int) or v <= 0:
      raise DistributedError(f"{k} must be a positive int (seconds), got {v!r}")
  flags = {"--coordinator": coordinator, "--num-processes": num_processes,
           "--process-id": process_id}
  envs = {ENV_COORDINATOR: env.get(ENV_COORDINATOR) or None,
          ENV_NUM_PROCESSES: env.get(ENV_NUM_PROCESSES) or None,
          ENV_PROCESS_ID: env.get(ENV_PROCESS_ID) or None}
  if any(v is not None for v in flags.values()):
    source, given = "flags", flags
  elif envs[ENV_NUM_PROCESSES] is not None or envs[ENV_PROCESS_ID] is not None:
    source, given = "env", envs
  else:
    given = None
  if given is not None:
    (c_name, c), (n_name, n), (i_name, i) = given.items()
    missing = [name for name, v in given.items() if v is None]
    if missing and not auto:
      raise DistributedError(f"incomplete multi-process layout from {source}: set "
                             f"{', '.join(missing)} too (or --distributed to let JAX detect "
                             f"the rest)")
    n, i = _int(n, n_name), _int(i, i_name)
    if c is not None and (":" not in c or not c.rsplit(":", 1)[1].isdigit()):
      raise DistributedError(f"{c_name} must look like HOST:PORT, got {c!r}")
    if n is not None and n < 1:
      raise DistributedError(f"{n_name} must be >= 1, got {n}")
    if n is not None and i is not None and not 0 <= i < n:
      raise DistributedError(f"{i_name} must be in [0, {n}) for {n} processes, got {i}")
    if n == 1 and not auto:
      return None
    return ClusterSpec(c, n, i, source=source, **timeouts)
  ntasks = _int(env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS"), "SLURM_NTASKS")
  if "SLURM_JOB_ID" in env and "SLURM_PROCID" in env and (ntasks or 1) > 1:
    return ClusterSpec(source="slurm", **timeouts)
  if auto:
    return ClusterSpec(source="auto", **timeouts)
  return None


def initialize(spec: ClusterSpec | None) -> None:
  """Joins the run described by ``spec`` (no-op for None); call before any JAX computation.

  Raises:
    DistributedError: JAX was already initialised, or the processes did not all connect
      within ``spec.init_timeout_s``.
  """
  if spec is None:
    return
  kwargs = dict(initialization_timeout=spec.init_timeout_s,
                heartbeat_timeout_seconds=spec.heartbeat_timeout_s,
                shutdown_timeout_seconds=spec.shutdown_timeout_s)
  if spec.source not in ("slurm", "auto"):
    kwargs.update(coordinator_address=spec.coordinator, num_processes=spec.num_processes,
                  process_id=spec.process_id)
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # pylint: disable=broad-except
    where = spec.coordinator or "the auto-detected coordinator"
    raise DistributedError(f"could not join the multi-process run ({spec.source}) at {where} "
                           f"within {spec.init_timeout_s}s: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None


def is_writer() -> bool:
  """True on the process that writes the run directory (process 0)."""
  return jax.process_index() == 0


def describe() -> str:
  """``"process 1 of 2"``."""
  return f"process {jax.process_index()} of {jax.process_count()}"


def to_host(tree: Any) -> Any:
  """Host (numpy) copies of every leaf, whole, on every process.

  Arrays split across processes are gathered with
  ``jax.experimental.multihost_utils.process_allgather`` — a collective: every process must
  call this with the same tree at the same point.
  """
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(get, tree)


def check_same(value: int, what: str) -> None:
  """Raises ``DistributedError`` unless every process holds the same int ``value``."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  values = np.asarray(multihost_utils.process_allgather(np.int64(value))).reshape(-1)
  if not np.all(values == values[0]):
    raise DistributedError(f"processes disagree on {what}: {values.tolist()} (is the run "
                           f"directory on a filesystem every process sees?)")


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier ``name`` (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def add_arguments(parser: Any) -> None:
  """Adds the multi-process flags to an ``argparse`` parser (``meta-train`` uses it)."""
  group = parser.add_argument_group(
      "multi-process runs (jax.distributed; see docs/scaling.md)",
      "Every process runs the same command; only process 0 writes the run directory. Without "
      "these flags the layout is read from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / "
      "JAX_PROCESS_ID, or from SLURM under srun.")
  group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                     help="address of process 0's coordination service")
  group.add_argument("--num-processes", type=int, default=None, metavar="N",
                     help="number of processes in the run")
  group.add_argument("--process-id", type=int, default=None, metavar="I",
                     help="this process's index, 0 .. N-1 (0 writes the run directory)")
  group.add_argument("--distributed", action="store_true",
                     help="let jax.distributed.initialize() detect the cluster (TPU pod "
                          "slice, SLURM, Open MPI)")
  group.add_argument("--heartbeat-timeout", type=int, default=None, metavar="SECONDS",
                     help="declare a silent process dead and stop the run after this long "
                          f"(default {ClusterSpec.heartbeat_timeout_s})")
  group.add_argument("--init-timeout", type=int, default=None, metavar="SECONDS",
                     help="wait this long for every process to connect "
                          f"(default {ClusterSpec.init_timeout_s})")


def join_from_args(args: Any) -> ClusterSpec | None:
  """Resolves the layout from parsed :func:`add_arguments` flags and the environment, and joins.

  Raises:
    DistributedError: bad flags/environment or the processes could not connect.
  """
  spec = resolve_spec(args.coordinator, args.num_processes, args.process_id,
                      auto=args.distributed, heartbeat_timeout_s=args.heartbeat_timeout,
                      init_timeout_s=args.init_timeout)
  initialize(spec)
  return spec


@contextlib.contextmanager
def exit_on_peer_failure(run_dir: str, passthrough: tuple[type[BaseException], ...] = (),
                         stream: TextIO | None = None) -> Iterator[None]:
  """In a multi-process run, turns a failed step into a clear message and a prompt exit.

  A collective whose peer died raises (gloo: "connection closed by peer"); letting Python
  unwind would then block in JAX's shutdown barrier until ``shutdown_timeout_s`` and abort.
  Instead this prints one line naming this process, the error and how to resume, and exits
  with :data:`EXIT_PEER_LOST` at once. A peer that stops without closing its connections is
  caught by the heartbeat instead: JAX terminates the surviving processes after
  ``heartbeat_timeout_s``. Single-process runs and ``passthrough`` exceptions propagate.
  """
  try:
    yield
  except passthrough:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    stream = sys.stderr if stream is None else stream
    first = str(e).splitlines()[0] if str(e) else ""
    print(f"meta-train: {describe()}: the multi-process run failed, most likely because "
          f"another process died or lost its network ({type(e).__name__}: {first}). Exiting "
          f"with status {EXIT_PEER_LOST}; rerun the same command on every host to resume from "
          f"the newest checkpoint in {run_dir}.", file=stream, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_PEER_LOST)  # pylint: disable=protected-access


__all__ = ["ClusterSpec", "DistributedError", "EXIT_PEER_LOST", "add_arguments", "barrier",
           "check_same", "describe", "exit_on_peer_failure", "initialize", "is_writer",
           "join_from_args", "resolve_spec", "to_host"]
