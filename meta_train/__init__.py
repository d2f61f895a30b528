"""meta_train: unrolls, gradient estimators, the outer trainer, runs, metrics logs and the CLI."""

# Meta-training core: unrolls, estimators, outer trainer.
from meta_train.errors import FieldError
from meta_train.estimators.antithetic import AntitheticEstimator
from meta_train.estimators.estimator import Estimator, GradientEstimator
from meta_train.estimators.full_es import FullES
from meta_train.estimators.pes import PES
from meta_train.estimators.registry import ESTIMATORS, build_estimator, make_estimator
from meta_train.estimators.tbptt import TBPTT
from meta_train.estimators.truncated_es import TruncatedES
from meta_train.trainer import MetaTrainer, MetaTrainerState
from meta_train.unroll import ParticleState, UnrollConfig, UnrollOutput

# Devices and hosts: particles sharded over a mesh; multi-process runs with jax.distributed.
from meta_train.runtime.distributed import ClusterSpec, DistributedError, is_writer
from meta_train.runtime.sharding import make_mesh

# Runs: typed config, driver, checkpoints, metrics logs, progress, CLI.
from meta_train.config import ConfigError, RunConfig
from meta_train.runtime.run import RunDirError, RunResult
