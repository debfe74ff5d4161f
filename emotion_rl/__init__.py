"""emotion_rl: MuZero-family planning over abstract emotions, as a PyTorch Lightning plugin.

The public API, by layer (docs/index.md):

- data types: :class:`History` (the real history the model reads, spec 1.3), :data:`NONE`;
- the network and the planner: :class:`EmotionModel` (spec 2.1), :class:`EmotionMCTS` (spec 1), and the planners
  without search it is measured against, :class:`PriorPlanner` and :class:`FixedEmotionPlanner`;
- acting: :class:`EmotionPolicy` (a TorchRL policy module), :class:`TemperatureSchedule` (spec 3.4), :func:`make_env`,
  :class:`PreviousReward` (the transform an env of your own needs, with TorchRL's ``InitTracker``), :func:`play`,
  :func:`closing_collector` / :func:`shutdown_collector` (collectors that exit cleanly);
- learning: the four phase losses (:class:`DynamicsLoss`; :class:`ActionLoss` and its objectives
  :class:`MaxValueActionLoss`, :class:`LiteralActionLoss`, :class:`AssignedActionLoss`; :class:`ValueLoss` with its
  value estimator :class:`MonteCarlo` (the base: :class:`ValueEstimator`); :class:`PolicyLoss`; spec 2.2),
  :class:`EmotionAgent` (LightningModule, spec 2.3), :class:`EmotionDataModule` (collector and replay, spec 3.3, 5);
- components in configs: :class:`Configurable`, :func:`to_config`, :func:`instantiate` (class_path + init_args);
- loading and acting: ``EmotionAgent.load`` and ``predict`` (:class:`~emotion_rl.predict.LoadAndPredict`);
- checkpoints: :class:`AtomicCheckpointIO`, :class:`BatchCheckpoint` (last and best), :class:`RecordEnvironment` and
  :class:`EnvironmentRecord` (the environment a checkpoint was trained on).
"""

from emotion_rl.agent import EmotionAgent
from emotion_rl.checkpoint import AtomicCheckpointIO, BatchCheckpoint
from emotion_rl.config import Configurable, instantiate, to_config
from emotion_rl.data.datamodule import EmotionDataModule
from emotion_rl.data.envs import PreviousReward, make_env
from emotion_rl.data.rollout import play
from emotion_rl.data.selfplay import closing_collector, shutdown_collector
from emotion_rl.env_record import EnvironmentRecord, RecordEnvironment
from emotion_rl.evaluation import EvalCallback, RecordingPlanner
from emotion_rl.history import NONE, History
from emotion_rl.losses import (
    ActionLoss,
    AssignedActionLoss,
    DynamicsLoss,
    LiteralActionLoss,
    MaxValueActionLoss,
    MonteCarlo,
    PhaseLoss,
    PolicyLoss,
    ValueEstimator,
    ValueLoss,
)
from emotion_rl.mcts.planners import FixedEmotionPlanner, PriorPlanner
from emotion_rl.mcts.rules import GumbelRoot, PUCTRoot, RootDecision, RootRule
from emotion_rl.mcts.search import EmotionMCTS
from emotion_rl.model import EmotionModel
from emotion_rl.policy import EmotionPolicy, TemperatureSchedule

__all__ = [
    "GumbelRoot",
    "PUCTRoot",
    "RootDecision",
    "RootRule",
    "NONE",
    "ActionLoss",
    "AssignedActionLoss",
    "AtomicCheckpointIO",
    "BatchCheckpoint",
    "Configurable",
    "DynamicsLoss",
    "EmotionAgent",
    "EmotionDataModule",
    "EmotionMCTS",
    "EmotionModel",
    "EmotionPolicy",
    "EnvironmentRecord",
    "EvalCallback",
    "FixedEmotionPlanner",
    "History",
    "LiteralActionLoss",
    "MaxValueActionLoss",
    "MonteCarlo",
    "PhaseLoss",
    "PolicyLoss",
    "PreviousReward",
    "PriorPlanner",
    "RecordEnvironment",
    "RecordingPlanner",
    "TemperatureSchedule",
    "ValueEstimator",
    "ValueLoss",
    "closing_collector",
    "instantiate",
    "make_env",
    "play",
    "shutdown_collector",
    "to_config",
]
__version__ = "0.1.0"
