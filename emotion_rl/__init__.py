"""emotion_rl: MuZero-family planning over abstract emotions, as a PyTorch Lightning plugin.

Public API:

- :class:`EmotionModel` - the causal transformer with four outputs (spec 2.1).
- :class:`EmotionMCTS` - batched MCTS over emotions (spec 1).
- :class:`EmotionPolicy` - the planner as a TorchRL policy module; :class:`TemperatureSchedule` (spec 3.4).
- :class:`EmotionAgent` - the LightningModule with the four training phases (spec 2.3).
- :class:`EmotionDataModule` - TorchRL collector and replay buffer of whole episodes (spec 3.3, 5).
- :class:`AtomicCheckpointIO` - Lightning checkpoint plugin: atomic writes, ``weights_only`` loads (README, "Resuming").
"""

from emotion_rl.agent import EmotionAgent
from emotion_rl.checkpoint import AtomicCheckpointIO
from emotion_rl.datamodule import EmotionDataModule
from emotion_rl.envs import make_env
from emotion_rl.model import EmotionModel
from emotion_rl.policy import EmotionPolicy, TemperatureSchedule
from emotion_rl.search import EmotionMCTS

__all__ = [
    "AtomicCheckpointIO",
    "EmotionAgent",
    "EmotionDataModule",
    "EmotionMCTS",
    "EmotionModel",
    "EmotionPolicy",
    "TemperatureSchedule",
    "make_env",
]
__version__ = "0.1.0"
