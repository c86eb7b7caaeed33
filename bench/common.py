"""What the benchmark scripts share."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

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


#: name -> (the call to time, a factory of the context each round of it runs in).
Variants = dict[str, tuple[Callable[[], None], Callable[[], AbstractContextManager[Any]]]]


def fastest(
    variants: Variants, n: int, repeat: int, between: Callable[[], None] | None = None
) -> dict[str, float]:
    """Seconds per call of each variant's function, called n times inside its context, in
    rounds that alternate between the variants, each round starting with the next one, so drift
    hits all and none always follows the same one; between() runs untimed after each round
    (e.g. to empty a queue, so each sees the same queue size). The fastest round of each, the
    least disturbed by other processes on a shared machine."""
    best = dict.fromkeys(variants, float("inf"))
    order = list(variants.items())
    for turn in range(repeat):
        shift = turn % len(order)
        for name, (run, context) in order[shift:] + order[:shift]:
            with context():
                start = time.perf_counter()
                for _ in range(n):
                    run()
                best[name] = min(best[name], (time.perf_counter() - start) / n)
            if between is not None:
                between()
    return best
