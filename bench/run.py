"""Run every benchmark, one after another, each in its own process.

Each script measures its own baseline in the same run (the raw client, a bare Django view, or
one-by-one sends) and prints ratios against it, so figures from different machines compare.
``make bench`` runs this; ``make bench BENCH="api.py async_send.py"`` runs some of them.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["emulator.py", "api.py", "on_commit.py", "async_send.py", "outbox.py", "records.py"]


def main() -> int:
    failed = []
    for name in sys.argv[1:] or SCRIPTS:
        print(f"\n### bench/{name}", flush=True)
        result = subprocess.run([sys.executable, str(HERE / name)], check=False)  # noqa: S603 - our own scripts
        if result.returncode:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
