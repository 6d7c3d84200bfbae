"""benchmarks/bench_export.py runs end to end on a tiny run (a smoke test: timings belong in the docs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_export_prints_a_row_per_engine_with_its_accuracy(tiny_run) -> None:
    run_dir, _ = tiny_run
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_export.py"), str(run_dir),
                             "--seconds", "0.05", "--photos", "8"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"command: python benchmarks/bench_export.py {run_dir} --seconds 0.05 --photos 8"
    assert "torch.backends.cpu.get_cpu_capability() = " in lines[1]
    rows = [line for line in lines if line.startswith("| cnn3 96px |")]
    engines = [row.split(" | ")[1] for row in rows]
    assert engines[0] == "PyTorch eager fp32" and engines[1].startswith("PyTorch eager bf16 autocast")
    assert engines[2:] == ["TorchScript", "onnxruntime fp32", "onnxruntime int8"]
    for row in rows:
        assert re.fullmatch(r"\| cnn3 96px \| [^|]+ \| \d+ \| \d+ \| 1\.0000 \(8 photos\) \|", row), row
    assert re.fullmatch(r"cnn3 96px: onnxruntime int8 is \d+\.\d\dx PyTorch eager fp32 at batch 1 \(\d+\.\d\dx at "
                        r"batch 64\), accuracy \+0\.00 points", lines[-1])
