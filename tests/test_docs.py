"""The documentation site builds with strict link checking; the README's Python snippets and the docs' code blocks
marked runnable (an HTML comment ``<!-- runnable -->`` on the line before a python block, invisible on GitHub and
on the site) run as written, from the repository root."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- runnable -->"
RUNNABLE = re.compile(re.escape(MARKER) + r"\n```python\n(.*?)```", re.S)


def runnable_blocks() -> list[tuple[str, int, str]]:
    """``(docs file, index, code)`` of every block marked runnable in docs/*.md."""
    return [
        (path.name, index, code)
        for path in sorted((ROOT / "docs").glob("*.md"))
        for index, code in enumerate(RUNNABLE.findall(path.read_text()))
    ]


def test_the_docs_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()


def test_the_readme_python_snippets_run_as_written(monkeypatch):
    readme = (ROOT / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(snippets) >= 2, "the README lost its load-and-predict or its building-blocks snippet"
    assert any("EmotionAgent.load(" in s and ".predict(" in s for s in snippets)
    monkeypatch.chdir(ROOT)  # the snippets name files of the repository (models/cartpole.ckpt)
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), {"__name__": "__readme__"})


@pytest.mark.parametrize(("name", "index", "code"), runnable_blocks(), ids=lambda v: str(v)[:20])
def test_a_docs_block_marked_runnable_runs_as_written(name, index, code, monkeypatch):
    monkeypatch.chdir(ROOT)
    exec(compile(code, f"docs/{name} (block {index})", "exec"), {"__name__": "__docs__"})


def test_every_runnable_marker_sits_before_a_python_block_and_the_load_and_torchrl_paths_are_marked():
    for path in (ROOT / "docs").glob("*.md"):
        text = path.read_text()
        assert text.count(MARKER) == len(RUNNABLE.findall(text)), f"{path.name}: a marker not before ```python"
    names = {name for name, _, _ in runnable_blocks()}
    assert {"api.md", "torchrl.md"} <= names


def test_no_committed_text_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    pattern = re.compile(r"SPEC_NOTES|shared/seeds|(^|[^A-Za-z0-9_.])/(work|root|home|tmp)/")
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ".json", ".log", ".csv"} or not path.is_file():
            continue
        if name == "tests/test_docs.py":  # this file spells the patterns it looks for
            continue
        if pattern.search(path.read_text(errors="ignore")):
            offenders.append(name)
    assert not offenders, f"files citing paths or notes outside the repository: {offenders}"


def test_the_readme_stays_within_12_kb_and_keeps_its_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12_288, "README.md over 12 KB: move detail into docs/"
    assert "pip install -e . && python -m emotion_rl fit --config configs/cartpole.yaml" in readme
    assert 'pip install -q -e ".[test]" && python -m pytest -q' in readme


@pytest.mark.parametrize("name", ["cartpole", "acrobot", "mountaincar", "lunarlander"])
def test_each_config_header_says_what_it_was_measured_on_and_where_the_results_are(name):
    header = "\n".join(
        line for line in (ROOT / "configs" / f"{name}.yaml").read_text().splitlines() if line.startswith("#")
    )
    assert "# Measured" in header, f"configs/{name}.yaml: no 'Measured' line in its header"
    folders = re.findall(r"benchmarks/results/[\w/.-]+/", header)
    assert folders or "not measured" in header, f"configs/{name}.yaml: neither a results folder nor 'not measured'"
    for folder in folders:
        assert (ROOT / folder).is_dir(), f"configs/{name}.yaml names {folder}, which does not exist"
