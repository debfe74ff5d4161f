"""Deprecated alias of :mod:`emotion_rl.data.envs` (the environments moved there); import from the new path.

The old public path keeps working for code written against it: the same objects, and one ``FutureWarning`` (shown
by default, unlike a ``DeprecationWarning``) when this module is first imported.
"""

from __future__ import annotations

import warnings

from emotion_rl.data.envs import (
    EnvConstructionError,
    EnvInfo,
    FiniteCheck,
    MissingDependencyError,
    NonFiniteError,
    PreviousReward,
    make_env,
    probe_env,
)

__all__ = [
    "EnvConstructionError",
    "EnvInfo",
    "FiniteCheck",
    "MissingDependencyError",
    "NonFiniteError",
    "PreviousReward",
    "make_env",
    "probe_env",
]

warnings.warn(
    "emotion_rl.envs is deprecated: import from emotion_rl.data.envs (or emotion_rl: make_env, PreviousReward)",
    FutureWarning,
    stacklevel=2,
)
