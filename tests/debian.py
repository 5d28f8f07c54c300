"""Programs from Debian's packages that tests need: installed on first use when missing.

``scripts/ensure_debian_package.sh`` does the installing (apt-get, as root or
with password-less sudo), so a fresh machine runs the whole suite with nothing
installed by hand.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ENSURE = Path(__file__).resolve().parents[1] / "scripts" / "ensure_debian_package.sh"

CHROMIUM = Path("/usr/bin/chromium")
PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")


def ensure(package: str, *programs: Path) -> None:
    """Install ``package`` unless every one of ``programs`` is there; fail the test clearly if it cannot."""
    if all(program.exists() for program in programs):
        return
    completed = subprocess.run(
        ["sh", str(ENSURE), package, *map(str, programs)], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0 or not all(program.exists() for program in programs):
        pytest.fail(
            f"{', '.join(map(str, programs))} missing and {ENSURE.name} could not install {package} "
            f"(exit status {completed.returncode}):\n{completed.stderr.strip()}",
            pytrace=False,
        )


def chromium() -> Path:
    ensure("chromium", CHROMIUM)
    return CHROMIUM


def promtool() -> str:
    ensure("prometheus", PROMETHEUS, PROMTOOL)
    return str(PROMTOOL)


def prometheus() -> str:
    ensure("prometheus", PROMETHEUS, PROMTOOL)
    return str(PROMETHEUS)
