"""meta_train: unrolls, gradient estimators, the outer trainer, runs, metrics logs and the CLI."""

# Meta-training core: unrolls, estimators, outer trainer.
from meta_train.antithetic import AntitheticEstimator
from meta_train.errors import FieldError
from meta_train.estimator import Estimator, GradientEstimator
from meta_train.full_es import FullES
from meta_train.pes import PES
from meta_train.registry import ESTIMATORS, build_estimator, make_estimator
from meta_train.tbptt import TBPTT
from meta_train.trainer import MetaTrainer, MetaTrainerState
from meta_train.truncated_es import TruncatedES
from meta_train.unroll import ParticleState, UnrollConfig, UnrollOutput

# Devices and hosts: particles sharded over a mesh; multi-process runs with jax.distributed.
from meta_train.distributed import ClusterSpec, DistributedError, is_writer
from meta_train.sharding import make_mesh

# Runs: typed config, driver, checkpoints, metrics logs, progress, CLI.
from meta_train.config import ConfigError, RunConfig
from meta_train.run import RunDirError, RunResult
