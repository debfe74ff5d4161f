"""Evaluating an agent: the protocol's scoring, greedy play on fixed start states, the search-gain table, the emotions'
heads, the depth the search sees, and a Lightning callback that evaluates during training (docs/benchmarks.md).

- :mod:`~emotion_rl.evaluation.protocol`: a run's score (last-third mean), when it reached the threshold, whether
  it held it, the IQM over seeds and the screening rule;
- :mod:`~emotion_rl.evaluation.play`: greedy play of an agent or any planner on its model, ``N`` episodes from the
  start states of a seed (:func:`evaluate`, :func:`play_greedy`), and the env settings they play;
- :mod:`~emotion_rl.evaluation.gain`: the search-gain table (search, search by the other decision, values, prior,
  each emotion) on the same start states (:func:`measure_gain`);
- :mod:`~emotion_rl.evaluation.heads`: the emotions' head agreement and the disagreement check;
- :mod:`~emotion_rl.evaluation.depth`: what the tree believes along the path taken (:func:`measure_depth`);
- :mod:`~emotion_rl.evaluation.recording`: :class:`RecordingPlanner`, the search's outputs kept as it acts;
- :mod:`~emotion_rl.evaluation.callback`: :class:`EvalCallback`.
"""

from emotion_rl.evaluation.callback import EvalCallback
from emotion_rl.evaluation.depth import measure_depth
from emotion_rl.evaluation.gain import gain_rows, gain_table, measure_gain, play_row
from emotion_rl.evaluation.heads import check_disagreements, head_agreement
from emotion_rl.evaluation.play import (
    Played,
    checkpoint_settings,
    datamodule_settings,
    display_path,
    env_settings,
    episode_limit,
    evaluate,
    play_greedy,
)
from emotion_rl.evaluation.protocol import first_reached, held, iqm, last_third_mean, screen_passes
from emotion_rl.evaluation.recording import RecordingPlanner

__all__ = [
    "EvalCallback",
    "Played",
    "RecordingPlanner",
    "check_disagreements",
    "checkpoint_settings",
    "datamodule_settings",
    "display_path",
    "env_settings",
    "episode_limit",
    "evaluate",
    "first_reached",
    "gain_rows",
    "gain_table",
    "head_agreement",
    "held",
    "iqm",
    "last_third_mean",
    "measure_depth",
    "measure_gain",
    "play_greedy",
    "play_row",
    "screen_passes",
]
