"""Install into a virtual environment the exact uv that uv.lock pins, hash-checked.

``make install`` runs this once per environment: uv then installs everything else
from uv.lock (``uv sync --locked``). Usage: ``python deploy/local/bootstrap_uv.py .venv``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def locked_uv(lock: Path) -> tuple[str, list[str]]:
    """uv's pinned version and the sha256 hashes of its wheels and sdist in ``lock``."""
    for package in tomllib.loads(lock.read_text())["package"]:
        if package["name"] == "uv":
            files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
            return package["version"], [f["hash"] for f in files]
    raise SystemExit(f"{lock}: uv is not pinned (it must be in the test extra of pyproject.toml)")


def main(venv: str) -> None:
    version, hashes = locked_uv(REPO / "uv.lock")
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
        req.write(f"uv=={version} " + " ".join(f"--hash={h}" for h in hashes) + "\n")
        req.flush()
        # -qq: the one line make prints says what happens; pip's notices are not errors.
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-qq",
                "--disable-pip-version-check",
                "--require-hashes",
                "-r",
                req.name,
            ],
            check=True,
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".venv")
