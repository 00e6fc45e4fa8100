"""Provenance stored beside every result: code version and environment."""
from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def code_version() -> str:
    """Package version plus the git commit of the source tree when it is a checkout."""
    from .. import __version__

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def environment() -> dict[str, str]:
    """What ran the job: versions and hardware, stored beside every result."""
    from importlib.metadata import version

    import h5py
    import sklearn

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "h5py": h5py.__version__,
        "click": version("click"),
        "cpu_threads": str(torch.get_num_threads()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
