"""The documentation site builds with strict link checking, and the README's Python snippet runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()


def test_the_readme_python_snippet_runs_as_written():
    readme = (ROOT / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert snippets, "the README has no Python snippet"
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), {})


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
