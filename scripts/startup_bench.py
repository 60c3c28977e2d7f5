"""How long kd-run takes to answer when it has nothing to train, measured beside `python -c "import torch"`.

Each command runs REPEATS times in a fresh process, alternating between them so that a busy machine
slows all of them alike; the table shows the median wall time of each and its ratio to importing torch.

    .venv/bin/python scripts/startup_bench.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = {
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
    "kd-run --help": [str(BIN / "kd-run"), "--help"],
    "kd-run --version": [str(BIN / "kd-run"), "--version"],
    "kd-run --shell-completion": [str(BIN / "kd-run"), "--shell-completion"],
    "kd-run alpha=2 (usage error)": [str(BIN / "kd-run"), "alpha=2"],
    "kd-run teacher=resnet5 (usage error)": [str(BIN / "kd-run"), "teacher=resnet5"],
    "kd-aggregate --help": [str(BIN / "kd-aggregate"), "--help"],
    "kd-report --help": [str(BIN / "kd-report"), "--help"],
}


def seconds(command: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory() as cwd:  # a usage error must write nothing, but not into the checkout
        for _ in range(args.repeats):
            for name, command in COMMANDS.items():
                times[name].append(seconds(command, cwd))
    torch_s = statistics.median(times['python -c "import torch"'])
    print(f"{'command':<40} {'median s':>9} {'/ import torch':>15}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<40} {median:>9.2f} {median / torch_s:>15.2f}")


if __name__ == "__main__":
    main()
