"""What every plot shares: matplotlib's ``Figure`` (no ``pyplot`` state), the emotion colours, notebook display.

Needs the optional extra ``viz`` (``pip install -e ".[viz]"``: matplotlib, pillow, and pygame for gymnasium's
``rgb_array`` frames).
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import matplotlib
    from matplotlib.figure import Figure
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"emotion_rl.viz needs matplotlib and pillow ({error}); install them with: pip install -e '.[viz]'"
    ) from error

__all__ = ["CARTPOLE_OBSERVATION", "Figure", "emotion_color", "empty_panel", "inline_figures", "show_gif"]

#: CartPole-v1's observation entries with their units (gymnasium's documentation).
CARTPOLE_OBSERVATION = (
    "cart position (m)",
    "cart velocity (m/s)",
    "pole angle (rad)",
    "pole angular velocity (rad/s)",
)


def emotion_color(emotion: int) -> tuple[float, float, float, float]:
    """The colour of ``emotion`` in every plot and GIF (matplotlib's ``tab10``, emotion k -> colour k)."""
    return matplotlib.colormaps["tab10"](emotion % 10)


def empty_panel(ax, message: str) -> None:  # noqa: ANN001 - matplotlib Axes
    """A grey note in the middle of a panel whose data is missing."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")


def inline_figures(dpi: int = 72) -> None:
    """In a Jupyter notebook, show the figures that cells return (``%matplotlib inline``: the returned
    :class:`~matplotlib.figure.Figure` objects are not pyplot's, so they need its display hook), at ``dpi``.
    Outside IPython it does nothing."""

    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and getattr(shell, "kernel", None) is not None:
        shell.run_line_magic("matplotlib", "inline")
        matplotlib.rcParams["figure.dpi"] = dpi


def show_gif(path: str | os.PathLike):  # noqa: ANN201 - IPython.display.Image, or the path without IPython
    """A notebook display of the GIF at ``path`` (``IPython.display.Image``); the path itself outside IPython."""
    try:
        from IPython.display import Image as IPythonImage
    except ImportError:
        return Path(path)
    return IPythonImage(data=Path(path).read_bytes(), format="gif")
