"""The benchmark scripts that need no timing run end to end on tiny inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import make_classes, split_fixture

ROOT = Path(__file__).resolve().parents[1]


def test_paired_accuracy_of_a_run_against_its_copy(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    first = Path(shutil.copytree(run_dir, tmp_path / "a"))
    second = Path(shutil.copytree(run_dir, tmp_path / "b"))
    photos = Path(shutil.copytree(data / "test", tmp_path / "photos"))
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paired_accuracy.py"), str(first), str(second),
                             "--data", str(photos)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"12 photos in {photos}"
    correct = round(json.loads((first / "eval-photos" / "metrics.json").read_text())["accuracy"] * 12)
    assert lines[3] == f"| {first} | {correct} | {correct / 12:.4f} |"
    assert lines[4] == f"| {second} | {correct} | {correct / 12:.4f} |"
    # The same weights agree on every photo: nothing to tell them apart.
    assert lines[5] == "right only by a: 0; right only by b: 0; exact McNemar p = 1.000"
    # --checkpoint last: the runs' last weights, as the compute frontier measures its runs.
    last = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paired_accuracy.py"), str(first), str(second),
                           "--data", str(photos), "--checkpoint", "last"], capture_output=True, text=True, timeout=300)
    assert last.returncode == 0, last.stderr
    correct = round(json.loads((first / "eval-photos" / "metrics_last.json").read_text())["accuracy"] * 12)
    assert last.stdout.splitlines()[0] == f"12 photos in {photos}, last checkpoints"
    assert last.stdout.splitlines()[3] == f"| {first} | {correct} | {correct / 12:.4f} |"
    missing = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paired_accuracy.py"), str(first),
                              str(second), "--data", str(tmp_path / "nowhere")], capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2 and missing.stderr.splitlines() == [
        f"Error: --data {tmp_path / 'nowhere'} does not exist: pass a split folder, or a folder with one subfolder "
        "of photos per class"], missing.stderr


def test_class_weights_benchmark_runs_on_a_small_folder(tmp_path: Path) -> None:
    source = make_classes(tmp_path / "src", {"Cat": 10, "Dog": 30})
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_class_weights.py"), "--source",
                             str(source), "--dogs", "30", "--cats", "10", "--minutes", "0.005", "--image-size", "32"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| none", "| balanced"))]
    assert len(rows) == 2 and all(len(row.split("|")) == 8 for row in rows)


def test_time_to_accuracy_trains_a_candidate_recipe_and_keeps_earlier_rows(tmp_path: Path) -> None:
    """A recipe given as a YAML file trains for its budget and is measured on the test photos; the
    CSV keeps an earlier run's rows and replaces the one this run measured again."""
    import csv

    large = make_classes(tmp_path / "large", {"Cat": 24, "Dog": 24})
    test = make_classes(tmp_path / "test", {"Cat": 5, "Dog": 5}, seed=500)
    recipe = tmp_path / "tiny-candidate.yaml"
    recipe.write_text("model: bncnn-s\nimage_size: 40\nprogressive_size: 32\nbatch_size: 8\nepochs: 2\noptim: adam\n"
                      "scheduler: onecycle\nema: 0.9\n")
    out = tmp_path / "tta"
    header = "tool,version,precision,budget_min,epochs,train_s,wall_s,accuracy,accuracy_tta\n"
    out.with_suffix(".csv").write_text(header + "peer,peer 1.0,fp32,4,3,240,241,0.5,\n"
                                       "tiny-candidate,catsdogs 0.0,fp32,0.05,9,3,3,0.123456,0.5\n")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_time_to_accuracy.py"), "--large",
                             str(large), "--test", str(test), "--recipes", str(recipe), "--budgets", "0.05",
                             "--work", str(tmp_path / "work"), "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with out.with_suffix(".csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["tool"] for row in rows] == ["peer", "tiny-candidate"]
    ours = rows[1]
    metrics = json.loads((tmp_path / "work" / "runs" / "tiny-candidate-fp32-0.05m" / "eval-test" /
                          "metrics.json").read_text())
    assert float(ours["accuracy"]) == metrics["accuracy"] and ours["accuracy"] != "0.123456"
    assert int(ours["epochs"]) in (1, 2) and 0 < float(ours["train_s"]) <= 3 + 5  # the budget, plus its last step
    assert 0 <= float(ours["val_accuracy"]) <= 1 and ours["cpu"].endswith("threads")
    assert "| tiny-candidate | catsdogs " in result.stdout
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    # --keep-runs measures the finished run again instead of training it anew.
    run = tmp_path / "work" / "runs" / "tiny-candidate-fp32-0.05m"
    (run / "mine.txt").write_text("kept")
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_time_to_accuracy.py"), "--large",
                            str(large), "--test", str(test), "--recipes", str(recipe), "--budgets", "0.05",
                            "--work", str(tmp_path / "work"), "--out", str(out), "--keep-runs"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (run / "mine.txt").read_text() == "kept"
    with out.with_suffix(".csv").open() as handle:
        kept = list(csv.DictReader(handle))
    assert [row["tool"] for row in kept] == ["peer", "tiny-candidate"]
    assert kept[1]["accuracy"] == ours["accuracy"] and kept[1]["train_s"] == ours["train_s"]


data = split_fixture((10, 3, 3), size=40)


def test_bench_train_runs_in_tiny_mode(data: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--data", str(data),
                             "--tiny", "--image-size", "96", "--batch-size", "8"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "speed-up b/a:" in result.stdout and "GFLOP/s achieved" in result.stdout
    assert "evaluate (6 test images)" in result.stdout


def test_device_check_runs_on_the_cpu() -> None:
    """The script a session with a lent GPU runs; here it must at least work on the CPU."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--device", "cpu",
                             "--images", "16", "--size", "64"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("device: cpu") == 4
    assert "fp16 is for GPUs" in result.stdout and "test " in result.stdout
    assert "resume after 1 of 2 epochs: largest weight difference from a straight run 0.00e+00" in result.stdout
    assert "augment randaugment: 1 epoch(s)" in result.stdout and "gpu.yaml, 2 epochs: 2 epoch(s)" in result.stdout


def test_study_sizing_schedules_phases_one_after_another_on_the_next_free_slot(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from study_sizing import wall_seconds

    phases = [[3.0, 1.0, 1.0, 1.0], [2.0, 2.0]]
    assert wall_seconds(phases, 1) == 10.0
    assert wall_seconds(phases, 2) == 5.0  # 3 | 1+1+1, then 2 | 2
    assert wall_seconds(phases, 100) == 5.0  # the longest run of each phase


def test_study_sizing_prices_the_published_study() -> None:
    summary = ROOT / "docs" / "studies" / "petimages-large" / "summary.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study_sizing.py"), str(summary),
                             "--device", "cpu", "--image-size", "96", "--sample", "20", "--epochs", "2",
                             "--photos", "1000", "--seeds", "7", "--slots", "1", "4", "1000"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "630 training photos" in result.stdout and "7 seeds" in result.stdout
    assert "runs: 36 sweep, 28 study" in result.stdout
    rows = [line.strip("|").split("|") for line in result.stdout.splitlines() if line.startswith("| ")][1:]
    table = {int(slots): (float(device), float(wall)) for slots, device, wall in rows}
    assert sorted(table) == [1, 4, 1000]
    device_hours = table[1][0]
    assert device_hours > 0 and all(device == device_hours for device, _ in table.values())
    assert abs(table[1][1] - device_hours) <= 0.01  # one slot runs everything one after another
    assert table[1][1] > table[4][1] > table[1000][1] >= device_hours / 1000


def test_study_sizing_refuses_a_file_that_is_not_a_finished_study(tmp_path: Path) -> None:
    for name, text in (("broken.json", "{"), ("empty.json", json.dumps({"optims": ["adam"], "runs": []}))):
        (tmp_path / name).write_text(text)
        result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study_sizing.py"), str(tmp_path / name)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "give the summary.json of a finished `catsdogs compare` study" in result.stderr
