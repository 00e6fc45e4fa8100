"""What a command that only prints (help, lists) loads: scipy.stats alone costs ~0.6 s of a fresh process."""
from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from click.testing import CliRunner
from worstforget.cli import cli
for args in (["search", "--help"], ["list", "methods"], ["evaluate", "--help"]):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
loaded = sorted(m for m in ("scipy.stats", "sklearn", "h5py", "ray", "optuna", "diffusers") if m in sys.modules)
print(",".join(loaded))
"""


def test_help_and_lists_import_no_statistics_or_executor_library():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""
