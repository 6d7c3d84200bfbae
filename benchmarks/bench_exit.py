"""How long a process that trained with torch takes to exit, with and without catsdogs' set-up
(catsdogs.process.configure_process, which freezes the garbage collector's objects at exit).

    python benchmarks/bench_exit.py [--repeats 5]

Each child process imports what a training run imports (torch, and torch._dynamo, which torch.optim
loads when an optimizer is made), builds an Adam optimizer, then prints the wall clock and returns;
this process notes when the child has ended. The two kinds of child alternate, so that both see the
same machine; the medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CHILD = """
import sys, time
import torch
if sys.argv[1] == "configured":
    from catsdogs.process import configure_process
    configure_process()
torch.optim.Adam(torch.nn.Linear(4, 2).parameters())  # imports torch._dynamo, as every training run does
print(time.time(), flush=True)
"""


def exit_seconds(kind: str) -> float:
    """Seconds from the child's last statement to its end."""
    done = subprocess.run([sys.executable, "-c", CHILD, kind], capture_output=True, text=True, check=True)
    ended = time.time()
    return ended - float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import torch

    print(f"command: python benchmarks/bench_exit.py --repeats {args.repeats}")
    print(f"torch {torch.__version__}, torch.backends.cpu.get_cpu_capability() = "
          f"{torch.backends.cpu.get_cpu_capability()}")
    seconds: dict[str, list[float]] = {"plain": [], "configured": []}
    for _ in range(args.repeats):
        for kind in seconds:
            seconds[kind].append(exit_seconds(kind))
    medians = {kind: statistics.median(values) for kind, values in seconds.items()}
    for kind, values in seconds.items():
        print(f"{kind:<10} exit {medians[kind]:.2f} s (median of {', '.join(f'{v:.2f}' for v in values)})")
    print(f"configured / plain: {medians['configured'] / medians['plain']:.2f}")


if __name__ == "__main__":
    main()
