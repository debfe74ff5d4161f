"""Deprecated alias of :mod:`emotion_rl.data.envs` (the environments moved there); import from the new path.

The old public path keeps working for code written against it: the same objects, and one ``FutureWarning`` (shown
by default, unlike a ``DeprecationWarning``) when this module is first imported.
"""

from __future__ import annotations

import warnings

from emotion_rl.data import envs as _moved
from emotion_rl.data.envs import *  # noqa: F403 - the moved module's public names, one list of them

__all__ = list(_moved.__all__)

warnings.warn(
    "emotion_rl.envs is deprecated: import from emotion_rl.data.envs (or emotion_rl: make_env, PreviousReward)",
    FutureWarning,
    stacklevel=2,
)
