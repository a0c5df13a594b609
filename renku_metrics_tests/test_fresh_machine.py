"""What a newcomer's two commands rely on: one lock for every installed package,
the installed environment equal to it, the same lock in the image, and a README
whose commands exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UV = Path(sys.executable).parent / "uv"


def uv(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, UV_OFFLINE="1", UV_PYTHON_DOWNLOADS="never", UV_PROJECT_ENVIRONMENT=sys.prefix)
    return subprocess.run([str(UV), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def locked() -> dict[str, str]:
    return {p["name"]: p["version"] for p in tomllib.loads((REPO / "uv.lock").read_text())["package"]}


def test_installed_environment_is_the_lock_exactly():
    """`uv sync --check` compares the environment with uv.lock, both ways: a package
    missing, extra or at another version fails; `--locked` also fails when
    pyproject.toml changed without the lock being regenerated."""
    assert UV.exists(), f"{UV} missing: the environment was not installed by make install"
    result = uv("sync", "--locked", "--all-extras", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_dependency_added_without_relocking_is_caught(tmp_path):
    for name in ("pyproject.toml", "uv.lock", ".python-version", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    assert uv("lock", "--check", cwd=tmp_path).returncode == 0
    text = (tmp_path / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(
        text.replace('    "requests>=2.31",', '    "requests>=2.31",\n    "tabulate>=0.9",')
    )
    result = uv("lock", "--check", cwd=tmp_path)
    assert result.returncode != 0 and "update" in (result.stdout + result.stderr).lower()


def test_every_tool_the_commands_install_is_pinned():
    pins = locked()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    for requirement in wanted:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()
        assert name in pins, f"{name} is not in uv.lock"
    # Runtime, tests, lint, notebooks, browser driver, the installer itself, run pods.
    for name in ("dagster", "duckdb", "pytest", "ruff", "moto", "nbclient", "playwright", "uv", "dagster-k8s"):
        assert name in pins
    # The Dagster family moves together.
    assert pins["dagster-k8s"] == pins["dagster-postgres"] == pins["dagster-aws"]
    assert pins["dagster"] == pins["dagster-webserver"]
    # Every registry package carries hashes, so an install fails on a file that changed.
    for package in tomllib.loads((REPO / "uv.lock").read_text())["package"]:
        if package["source"].get("registry"):
            files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
            assert files and all(f["hash"].startswith("sha256:") for f in files), package["name"]


def test_the_installer_bootstraps_the_locked_uv():
    sys.path.insert(0, str(REPO / "deploy" / "local"))
    try:
        from bootstrap_uv import locked_uv
    finally:
        sys.path.pop(0)
    version, hashes = locked_uv(REPO / "uv.lock")
    assert version == locked()["uv"] and len(hashes) > 1
    installed = subprocess.run([str(UV), "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    assert installed == version


def test_python_image_and_installs_share_one_pin():
    python = (REPO / ".python-version").read_text().strip()
    assert re.fullmatch(r"3\.\d+", python)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == python
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f"=={python}.*"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^FROM python:{re.escape(python)}-slim$", dockerfile, re.M)
    # The image, CI and a laptop install from the same lock, refusing a stale one.
    assert "uv sync --locked" in dockerfile and "uv.lock" in dockerfile
    makefile = (REPO / "Makefile").read_text()
    assert "uv sync --locked --all-extras" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert not (REPO / "requirements.lock").exists()


# -- the README --------------------------------------------------------------------------


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_readme_fits_on_two_screens_and_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 130, "the README is the one-minute page: details go to docs/"
    for page in markdown_files():
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to {target}, which does not exist"


def test_every_command_the_docs_name_exists():
    targets = make_targets()
    named = set()
    for page in markdown_files():
        for block in re.findall(r"```(?:sh|bash|console)?\n(.*?)```", page.read_text(), re.S):
            for line in block.splitlines():
                line = line.strip()
                for target in re.findall(r"(?:^|&& |; )make ((?:[a-z][\w-]* ?)+)", line):
                    for word in target.split():
                        if "=" not in word:
                            named.add((page.name, word))
                for module in re.findall(r"python -m ([\w.]+)", line):
                    named.add((page.name, "-m " + module))
    assert ("README.md", "demo") in named and ("README.md", "test") in named
    for page, name in sorted(named):
        if name.startswith("-m "):
            module = name[3:]
            if module.split(".")[0] in ("renku_metrics", "renku_metrics_tests"):
                path = REPO / module.replace(".", "/")
                assert path.with_suffix(".py").exists() or (path / "__main__.py").exists(), f"{page}: {name}"
        else:
            assert name in targets, f"{page} names `make {name}`, which the Makefile does not define"


@pytest.mark.parametrize("target", ["demo", "test", "install", "dev", "lock"])
def test_readme_commands_are_make_targets(target):
    assert target in make_targets()
