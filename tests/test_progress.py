"""Progress bars: drawn on a terminal, absent from logs and pipes."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from catsdogs.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def drawn(show: bool, file: io.StringIO) -> str:
    for _ in progress_bar(range(50), show=show, desc="work", file=file, mininterval=0):
        pass
    return file.getvalue()


def test_a_terminal_gets_the_bar() -> None:
    assert "work: 100%" in drawn(True, Terminal()) and "50/50" in drawn(True, Terminal())


def test_a_log_file_or_pipe_gets_no_bar() -> None:
    assert drawn(True, io.StringIO()) == ""


def test_show_false_hides_it_even_on_a_terminal() -> None:
    assert drawn(False, Terminal()) == ""


def test_a_redirected_command_writes_only_its_own_lines(tiny_split, tmp_path: Path) -> None:
    data = tiny_split(tmp_path, size=96)
    done = subprocess.run([sys.executable, "-m", "catsdogs", "train", "--data", str(data), "--optim", "adam",
                           "--image-size", "96", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    log = done.stdout + done.stderr
    assert "epoch 1/1" in log and "\r" not in log and "batch/s" not in log and "it/s" not in log
