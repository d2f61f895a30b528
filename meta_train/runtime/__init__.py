"""What runs a meta-training job: the driver, checkpoints, devices, processes, logs, the CLI.

:mod:`~meta_train.runtime.run` (run directory, resume, loop, export),
:mod:`~meta_train.runtime.checkpoint` (orbax checkpoints with digests),
:mod:`~meta_train.runtime.sharding` (the particle mesh), :mod:`~meta_train.runtime.distributed`
(multi-process runs), :mod:`~meta_train.runtime.metrics_log` and
:mod:`~meta_train.runtime.progress` (metrics file, wandb, stdout, the bar) and
:mod:`~meta_train.runtime.cli` (the ``meta-train`` command).
"""
