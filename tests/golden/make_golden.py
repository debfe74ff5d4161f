"""Write the fixed-seed short `fit` metrics that tests/test_golden.py compares (counts exactly, floats within
``compare.RTOL``), or check this checkout against them.

    OMP_NUM_THREADS=1 python tests/golden/make_golden.py            # rewrite tests/golden/*.csv from this checkout
    OMP_NUM_THREADS=1 python tests/golden/make_golden.py --exact    # compare bit for bit (refactors, one machine)
    OMP_NUM_THREADS=1 python tests/golden/make_golden.py DIR        # write the files into DIR instead

Always with ``OMP_NUM_THREADS=1`` set before Python starts (tests/test_golden.py runs it so, in a subprocess): the
last bits of a few kernels follow the thread environment torch was imported in, even at one torch thread.

Run it only when a change is meant to alter the numbers (a new default, a new option turned on); a refactor must
leave the files as they are: ``--exact`` checks that bit for bit, on the machine that wrote them (another CPU may
differ in the last bits, which tests/test_golden.py tolerates). Each run is the shipped config shrunk by the
tests' TINY overrides, plus its variant.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from emotion_rl.cli import main  # noqa: E402

from compare import differences  # noqa: E402
from conftest import CONFIG, TINY  # noqa: E402

RUNS = {
    "shipped": [],
    "literal_whole_episodes_reanalyze": [
        "--data.context_window=null",
        "--model.action_loss=emotion_rl.LiteralActionLoss",
        "--model.dynamics_loss.init_args.action_input=action_head",
        "--data.reanalyze_fraction=0.5",
    ],
}
"""Golden runs: the shipped config (windows, section 4.3 phase 2, taken action), and the literal settings on whole
episodes with reanalyze."""

BATCHES = 10


def run_metrics(name: str, save_dir: str) -> list[dict[str, str]]:
    """Fit ``BATCHES`` training batches of golden run ``name``; its ``metrics.csv`` rows, metric columns only."""
    main(
        [
            "fit",
            f"--config={CONFIG}",
            *TINY,
            *RUNS[name],
            f"--trainer.max_steps={4 * BATCHES}",
            "--trainer.val_check_interval=5",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_checkpointing=false",
            "--trainer.callbacks=[]",
            "--model.log_diagnostics=false",  # logging only; its extra forward's last bits follow the thread setup
            f"--trainer.logger.init_args.save_dir={save_dir}",
            f"--trainer.logger.init_args.name={name}",
        ]
    )
    with open(Path(save_dir) / name / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def write(name: str, rows: list[dict[str, str]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    import torch

    if os.environ.get("OMP_NUM_THREADS") != "1":
        raise SystemExit("run with OMP_NUM_THREADS=1 (see the docstring)")
    torch.set_num_threads(1)
    arguments = sys.argv[1:]
    exact = "--exact" in arguments
    arguments = [a for a in arguments if a != "--exact"]
    out = Path(arguments[0]) if arguments else HERE
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            rows = run_metrics(name, tmp)
            if exact:
                with open(HERE / f"{name}.csv") as f:
                    problems = differences(list(csv.DictReader(f)), rows, rtol=0.0, atol=0.0)
                print(f"{name}: " + ("bit-identical" if not problems else "differs\n  " + "\n  ".join(problems)))
                failed |= bool(problems)
            else:
                write(name, rows, out / f"{name}.csv")
                print(f"wrote {out / f'{name}.csv'}")
    raise SystemExit(1 if failed else 0)
