"""What a researcher sees, by audience: learning curves (:mod:`.metrics`), runs' evaluation curves (:mod:`.curves`),
the search tree (:mod:`.tree`), the agent playing and its emotions (:mod:`.episodes`), and the command line
(:mod:`.__main__`).

Every plotting function returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (a notebook shows
it, a script calls ``fig.savefig``). Needs the optional extra ``viz`` (``pip install -e ".[viz]"``).
See docs/visualisation.md.
"""

from __future__ import annotations

from emotion_rl.viz.curves import plot_curves, read_curves
from emotion_rl.viz.episodes import (
    EpisodeRecord,
    episode_outputs,
    play_episode,
    plot_emotion_actions,
    plot_emotion_map,
    plot_emotion_values,
    render_episode,
)
from emotion_rl.viz.metrics import (
    plot_diagnostics,
    plot_emotion_usage,
    plot_metrics,
    plot_run_comparison,
    read_metrics,
)
from emotion_rl.viz.style import CARTPOLE_OBSERVATION, emotion_color, inline_figures, show_gif
from emotion_rl.viz.tree import SearchEdge, draw_search_tree, plot_search_sweep, plot_visits_vs_prior, search_edges

__all__ = [
    "CARTPOLE_OBSERVATION",
    "EpisodeRecord",
    "SearchEdge",
    "draw_search_tree",
    "emotion_color",
    "episode_outputs",
    "inline_figures",
    "load_agent",
    "main",
    "play_episode",
    "plot_diagnostics",
    "plot_curves",
    "plot_emotion_actions",
    "plot_emotion_map",
    "plot_emotion_usage",
    "plot_emotion_values",
    "plot_metrics",
    "plot_run_comparison",
    "plot_search_sweep",
    "plot_visits_vs_prior",
    "read_curves",
    "read_metrics",
    "render_episode",
    "search_edges",
    "show_gif",
]


def __getattr__(name: str):  # noqa: ANN202 - main and load_agent, imported on first use
    # not imported above: `python -m emotion_rl.viz` runs __main__ itself, which must not be imported before it
    if name in ("main", "load_agent"):
        from emotion_rl.viz import __main__ as command_line

        return getattr(command_line, name)
    raise AttributeError(f"module 'emotion_rl.viz' has no attribute {name!r}")
