"""What the benchmark scripts share."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_emulator(*options: str) -> tuple[subprocess.Popen[str], str]:
    """The emulator in its own process, as Cloud Tasks is a separate service: its threads then
    do not contend with the measured client code for one GIL. Returns the process and its
    gRPC address; the caller terminates the process."""
    proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "cloudtask.emulator", "--port", "0", "--quiet", *options],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"the emulator did not start: {line!r}")
    return proc, match.group(1)
