"""`make bench`: run every benchmark script in this folder, one after another, each printing its own table.

Benchmarks compare ratios measured in one run (ours vs a reference on the same machine) and report
medians: the machines are shared and noisy, so absolute seconds are only indicative.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(
        p for p in HERE.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_")
    )
    summary = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(script), *sys.argv[1:]])
        summary.append((script.name, code, time.perf_counter() - start))
    print("\n| benchmark | status | wall time |\n|---|---|---|")
    for name, code, seconds in summary:
        print(f"| {name} | {'ok' if code == 0 else f'FAILED ({code})'} | {seconds:.0f} s |")
    return max((code for _, code, _ in summary), default=0)


if __name__ == "__main__":
    sys.exit(main())
