"""What a wheel of mtlkit installs, and what the repository ships."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is in the standard library")
def test_wheel_installs_mtlkit_only() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), include=find["include"])
    assert "mtlkit" in packages and "mtlkit.strategies" in packages
    assert all(p == "mtlkit" or p.startswith("mtlkit.") for p in packages), packages
    assert "scripts" not in config["project"]  # no console script pointing into examples
    assert config["project"]["license"] == "Apache-2.0"
    assert config["project"]["license-files"] == ["LICENSE"]


def test_licence_text_is_shipped() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_no_shipped_file_names_a_machine_folder() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    hits = []
    for name in tracked.stdout.split():
        path = ROOT / name
        if (
            not path.is_file()
            or name.startswith("tests/")
            or path.suffix not in {".md", ".json", ".txt", ".py", ".toml"}
        ):
            continue
        text = path.read_text(errors="replace")
        for folder in ("/work/", "/root/", "/home/", "/tmp/"):
            if folder in text:
                hits.append(f"{name}: {folder}")
    assert not hits, hits
