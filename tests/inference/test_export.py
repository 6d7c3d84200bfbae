"""catsdogs export: ONNX and TorchScript files that carry their metadata and are verified against PyTorch."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from catsdogs import __version__
from catsdogs.atomic import write_text_atomic
from catsdogs.inference import export, verify
from catsdogs.inference.exported import RESIZE_RULE, load_exported
from catsdogs.inference.predict import load_trained
from catsdogs.training.checkpoint import save_checkpoint
from catsdogs.training.config import TrainConfig, config_to_yaml
from catsdogs.training.models import MODELS, build_model, list_models
from tests.helpers import invoke, write_tiny_split

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(tiny_run: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the session's tiny cnn3 run (96 px, fp32): export writes into the run folder."""
    return Path(shutil.copytree(tiny_run[0], tmp_path / "run"))


def test_onnx_export_verifies_on_the_test_photos_and_carries_its_metadata(run: Path, tiny_run) -> None:
    result = invoke("export", run)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    test_photos = tiny_run[1] / "test"
    assert lines[1] == f"verified model.onnx against PyTorch fp32 on 12 photos of {test_photos}"
    assert re.fullmatch(r"  largest probability difference: \d\.\d\de-\d\d", lines[2])
    assert lines[3:5] == ["  photos whose class differs: 0", "  accuracy: PyTorch 1.0000, ONNX 1.0000 (+0.00 points)"]
    assert lines[5] == "  passed: every class equal and probabilities within 0.0001"
    out = run / "export" / "model.onnx"
    assert lines[6].startswith(f"wrote {out} (")
    figures = json.loads((run / "export" / "verification.json").read_text())["files"]["model.onnx"]
    assert figures["passed"] and figures["photos"] == 12 and figures["class_differs"] == 0
    assert figures["max_prob_diff"] <= 1e-4 and figures["pytorch_accuracy"] == figures["export_accuracy"] == 1.0
    assert sorted(p.name for p in (run / "export").iterdir()) == ["model.onnx", "verification.json"]

    proto = onnx.load(str(out))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["catsdogs"])
    sha = __import__("hashlib").sha256((run / "best.pt").read_bytes()).hexdigest()
    assert meta == {"classes": ["Cat", "Dog"], "image_size": 96, "resize": RESIZE_RULE, "model": "cnn3",
                    "input": "uint8 RGB photos [N, image_size, image_size, 3]; normalisation is inside",
                    "outputs": ["probabilities", "logits"], "catsdogs_version": __version__,
                    "checkpoint": "best.pt", "checkpoint_sha256": sha}
    session = ort.InferenceSession(str(out))
    (given,) = session.get_inputs()
    assert (given.name, given.type, given.shape[1:]) == ("images", "tensor(uint8)", [96, 96, 3])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "logits"]
    for n in (1, 5):  # the batch dimension is free
        images = np.random.default_rng(n).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        probs, logits = session.run(None, {"images": images})
        assert probs.shape == logits.shape == (n, 2)
        np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(logits), 1).numpy(), atol=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_verifies_and_loads_with_its_metadata(run: Path) -> None:
    result = invoke("export", run, "--format", "torchscript", "--checkpoint", "last", "--verify-n", "5")
    assert result.exit_code == 0, result.output
    assert "verified model.torchscript against PyTorch fp32 on 5 photos of" in result.output
    assert "accuracy: PyTorch 1.0000, TorchScript 1.0000 (+0.00 points)" in result.output
    extra = {"catsdogs.json": ""}
    module = torch.jit.load(str(run / "export" / "model.torchscript"), _extra_files=extra)
    assert json.loads(extra["catsdogs.json"])["checkpoint"] == "last.pt"
    probs, logits = module(torch.zeros(3, 96, 96, 3, dtype=torch.uint8))
    assert probs.shape == logits.shape == (3, 2)


def write_labelled_photos(folder: Path, per_class: int, seed: int = 5) -> Path:
    """Photos in Cat/ and Dog/ at 96 px, from plain to hard: each class's colour blended up to half-way
    towards the other's, so some sit near the model's boundary, where int8 rounding can change a class."""
    colours = {"Cat": np.array([190.0, 70.0, 60.0]), "Dog": np.array([60.0, 70.0, 190.0])}
    rng = np.random.default_rng(seed)
    for name, other in (("Cat", "Dog"), ("Dog", "Cat")):
        (folder / name).mkdir(parents=True)
        for index in range(per_class):
            blend = rng.uniform(0.0, 0.5)
            colour = (1 - blend) * colours[name] + blend * colours[other]
            pixels = np.clip(colour + rng.normal(0.0, 25.0, (96, 96, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{index}.jpg", quality=90)
    return folder


def test_int8_is_calibrated_on_training_photos_and_agrees_with_pytorch_on_1000_photos(run: Path, tiny_run,
                                                                                      monkeypatch,
                                                                                      tmp_path: Path) -> None:
    calibrated: list[str] = []
    original = export.calibration_photos

    def spy(trained):
        photos = original(trained)
        calibrated.append(photos.source)
        return photos

    monkeypatch.setattr(export, "calibration_photos", spy)
    photos = write_labelled_photos(tmp_path / "photos", per_class=550)
    result = invoke("export", run, "--quantize", "int8", "--verify-on", photos)  # --verify-n 256, but int8 needs 1000
    assert result.exit_code == 0, result.output
    assert calibrated == [str((tiny_run[1] / "train").resolve())]  # training photos, never the test ones
    assert f"verified the fp32 graph of model.int8.onnx against PyTorch fp32 on 1000 photos of {photos}" \
        in result.output
    assert "quantizing with ranges calibrated on 32 training photos" in result.output
    assert f"verified model.int8.onnx against PyTorch fp32 on 1000 photos of {photos}" in result.output
    ratio = float(re.search(r"size: (\d\.\d\d)x the fp32 file's", result.output).group(1))
    assert 0.2 < ratio < 0.5  # int8 weights: about a quarter of the bytes, plus the graph
    figures = json.loads((run / "export" / "verification.json").read_text())["files"]
    int8 = figures["model.int8.onnx"]
    assert int8["passed"] and int8["photos"] == 1000 and int8["size_ratio"] == pytest.approx(ratio, abs=0.006)
    assert figures["the fp32 graph of model.int8.onnx"]["max_prob_diff"] <= 1e-4
    # The photos are hard enough that the model errs on some (its accuracy is neither 0 nor 1), and int8 gives
    # PyTorch's class on at least 99% of them with probabilities close to PyTorch's.
    assert 0.6 < int8["pytorch_accuracy"] < 0.99 and 0.6 < int8["export_accuracy"] < 0.99
    assert int8["class_differs"] <= 10 and int8["agreement"] == 1 - int8["class_differs"] / 1000
    assert 1e-5 < int8["max_prob_diff"] < 0.1
    change = int8["export_accuracy"] - int8["pytorch_accuracy"]
    assert int8["accuracy_change"] == pytest.approx(change, abs=1e-12)
    assert abs(change) <= int8["class_differs"] / 1000 + 1e-12  # a photo changes accuracy only by changing its class
    differs = re.search(r"  photos whose class differs: (\d+) \(agreement (\d+\.\d\d)%\)", result.output)
    assert int(differs.group(1)) == int8["class_differs"] and float(differs.group(2)) >= 99.0
    accuracy = re.search(r"  accuracy: PyTorch (\d\.\d{4}), ONNX int8 (\d\.\d{4}): change ([+-]\d\.\d\d) ± "
                         r"(\d\.\d\d) points \(paired standard error\) on 1000 of the 1100 labelled photos",
                         result.output)
    assert accuracy, result.output
    assert float(accuracy.group(3)) == pytest.approx(100 * change, abs=0.006)
    assert float(accuracy.group(4)) == pytest.approx(100 * int8["accuracy_change_se"], abs=0.006)
    assert "  passed: PyTorch's class on at least 99% of the photos" in result.output
    assert sorted(p.name for p in (run / "export").iterdir()) == ["model.int8.onnx", "verification.json"]
    assert load_exported(run / "export" / "model.int8.onnx").metadata["quantized"].startswith("int8")


def test_the_paired_standard_error_of_an_accuracy_change_is_worked_by_hand() -> None:
    # Correct before [1, 1, 0, 0], after [1, 0, 1, 1]: differences d = [0, -1, 1, 1], mean 0.25;
    # sample variance ((0.25)^2 + (1.25)^2 + 2 * (0.75)^2) / 3 = 2.75 / 3; SE = sqrt(2.75 / 3 / 4) = 0.478714.
    change, se = verify.paired_accuracy_change(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 1], bool))
    assert change == pytest.approx(0.25) and se == pytest.approx(0.478714, abs=1e-6)
    assert verify.paired_accuracy_change(np.array([1, 0, 1]), np.array([1, 0, 1])) == (0.0, 0.0)
    assert verify.paired_accuracy_change(np.array([1]), np.array([0])) == (-1.0, None)  # one photo: no spread


class SwapReddish(torch.nn.Module):
    """A stand-in for a broken int8 model: the other class's answer on every reddish photo."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        reddish = (x[:, 0] - x[:, 2]).mean(dim=(1, 2)) > 0  # normalised red above normalised blue
        return torch.where(reddish[:, None], logits.flip(1), logits)


def test_an_int8_model_that_changes_answers_without_changing_accuracy_fails_and_is_removed(run: Path, tiny_run,
                                                                                           monkeypatch,
                                                                                           tmp_path: Path) -> None:
    # Every test photo in both class folders: PyTorch is right on exactly one copy of each, so any model that
    # swaps answers photo by photo keeps its accuracy at 0.5000 (as the stand-in did, at 0.8867).
    photos = tmp_path / "paired"
    for name in ("Cat", "Dog"):
        shutil.copytree(tiny_run[1] / "test" / "Cat", photos / name, dirs_exist_ok=True)
        for path in (tiny_run[1] / "test" / "Dog").iterdir():
            shutil.copy(path, photos / name / f"dog-{path.name}")
    trained = load_trained(run, device="cpu")

    def quantize_badly(fp32_file, int8_file, calibration, metadata) -> None:
        export.write_onnx(SwapReddish(trained.model), int8_file, {**metadata, "quantized": "int8 (stand-in)"})

    monkeypatch.setattr(export, "quantize_int8", quantize_badly)
    result = invoke("export", run, "--quantize", "int8", "--verify-on", photos)
    assert result.exit_code == 1, result.output
    assert "  photos whose class differs: 12 (agreement 50.00%)" in result.output
    # d = +1 on 6 photos, -1 on 6, 0 on 12: mean 0, variance 12/23, SE = sqrt(12/23/24) = 0.1474 (14.74 points)
    assert ("  accuracy: PyTorch 0.5000, ONNX int8 0.5000: change +0.00 ± 14.74 points (paired standard error) on "
            "all 24 labelled photos") in result.output
    assert "  FAILED: PyTorch's class on at least 99% of the photos" in result.output
    error = result.output.splitlines()[-1]
    assert re.fullmatch(r"Error: the exported ONNX int8 model does not match PyTorch, so no file was written: 24 "
                        r"photos compared, largest probability difference [5-9]\.\d\de-01, 12 with another class "
                        r"\(agreement 50\.00%\), accuracy PyTorch 0\.5000 vs ONNX int8 0\.5000, change \+0\.00 ± "
                        r"14\.74 points \(PyTorch's class on at least 99% of the photos\); figures in "
                        r"\S+verification\.json", error), error
    figures = json.loads((run / "export" / "verification.json").read_text())["files"]["model.int8.onnx"]
    assert not figures["passed"] and figures["class_differs"] == 12 and figures["agreement"] == 0.5
    assert figures["accuracy_change"] == 0.0 and figures["accuracy_change_se"] == pytest.approx(0.147442, abs=1e-6)
    assert figures["max_prob_diff"] > 0.5  # a swapped answer moves its probability from p to 1 - p
    assert sorted(p.name for p in (run / "export").iterdir()) == ["verification.json"]  # the bad file is gone


def test_an_export_that_disagrees_is_removed_and_fails_with_the_figures(run: Path, monkeypatch) -> None:
    original = export.write_onnx

    def write_wrong(model, path, metadata):  # as if the exporter had mistranslated the head
        broken = build_model("cnn3", 2, 96)
        broken.load_state_dict(model.state_dict())
        with torch.no_grad():
            broken.classifier[-1].bias += torch.tensor([-5.0, 5.0])
        original(broken.eval(), path, metadata)

    monkeypatch.setattr(export, "write_onnx", write_wrong)
    (run / "export").mkdir()
    (run / "export" / "model.onnx").write_bytes(b"an earlier export")
    result = invoke("export", run, "--force")
    assert result.exit_code == 1
    assert "photos whose class differs: 6" in result.output and "FAILED" in result.output
    assert re.search(r"Error: the exported ONNX model does not match PyTorch, so no file was written: 12 photos "
                     r"compared, largest probability difference \d\.\d\de-01, 6 with another class, accuracy PyTorch "
                     r"1\.0000 vs ONNX 0\.5000 \(every class equal and probabilities within 0\.0001\); figures in "
                     r"\S+verification\.json", result.output)
    figures = json.loads((run / "export" / "verification.json").read_text())["files"]["model.onnx"]
    assert not figures["passed"] and figures["class_differs"] == 6
    assert (run / "export" / "model.onnx").read_bytes() == b"an earlier export"  # never replaced by a bad file
    assert not list((run / "export").glob(".*"))  # nor a temporary file left behind


def test_an_existing_file_is_refused_unless_force_replaces_it(run: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_bytes(b"# my notes\n\nnothing here is a model\n")
    result = invoke("export", run, "--format", "torchscript", "--verify-n", "2", "--out", notes)
    assert result.exit_code == 1
    assert result.output == (f"Error: {notes} already exists: pass --force to replace it, or choose another "
                             "--out\n")
    assert notes.read_bytes() == b"# my notes\n\nnothing here is a model\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md", "run"]  # no verification.json either
    result = invoke("export", run, "--format", "torchscript", "--verify-n", "2", "--out", notes, "--force")
    assert result.exit_code == 0, result.output
    assert load_exported(notes).metadata["checkpoint"] == "best.pt"  # it is now the model, as asked
    record = json.loads((tmp_path / "verification.json").read_text())
    assert record["written_by"] == "catsdogs export" and list(record["files"]) == ["notes.md"]
    # The default file too: a second export of the run is refused, the first kept.
    assert invoke("export", run, "--format", "torchscript", "--verify-n", "2").exit_code == 0
    first = (run / "export" / "model.torchscript").read_bytes()
    result = invoke("export", run, "--format", "torchscript", "--verify-n", "2")
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "pass --force" in result.output
    assert (run / "export" / "model.torchscript").read_bytes() == first


@pytest.mark.parametrize("foreign", ['{"my": "notes"}\n', "[1, 2, 3]\n", "not json at all\n", "{}\n"])
def test_a_verification_json_that_catsdogs_did_not_write_is_never_written_into(run: Path, tmp_path: Path,
                                                                              foreign: str) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "verification.json").write_text(foreign)
    for force in ([], ["--force"]):  # --force replaces a model file, never someone else's JSON
        result = invoke("export", run, "--format", "torchscript", "--verify-n", "2", "--out", folder / "m.pt",
                        *force)
        assert result.exit_code == 1
        assert result.output == (f"Error: {folder / 'verification.json'} was not written by catsdogs export, which "
                                 "records its figures there: move it away, or export into another folder\n")
        assert (folder / "verification.json").read_text() == foreign
        assert sorted(p.name for p in folder.iterdir()) == ["verification.json"]


def test_a_verification_json_of_an_earlier_catsdogs_gains_the_new_entry(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "app"
    folder.mkdir()
    old = {"model.onnx": {"file": "model.onnx", "format": "ONNX", "photos": 12, "source": "data/test",
                          "max_prob_diff": 1e-07, "class_differs": 0, "pytorch_accuracy": 1.0,
                          "export_accuracy": 1.0, "criterion": "every class equal", "passed": True,
                          "unreadable": 0, "size_ratio": None}}
    (folder / "verification.json").write_text(json.dumps(old, indent=2))  # as catsdogs wrote it before
    result = invoke("export", run, "--format", "torchscript", "--verify-n", "2", "--out", folder / "m.pt")
    assert result.exit_code == 0, result.output
    record = json.loads((folder / "verification.json").read_text())
    assert record["written_by"] == "catsdogs export" and record["files"]["model.onnx"] == old["model.onnx"]
    assert record["files"]["m.pt"]["passed"] and record["files"]["m.pt"]["photos"] == 2


def test_out_may_not_be_the_figures_file(run: Path, tmp_path: Path) -> None:
    result = invoke("export", run, "--format", "torchscript", "--out", tmp_path / "verification.json")
    assert result.exit_code == 2
    assert "--out cannot be named verification.json: export records its figures there" in result.output
    assert not (tmp_path / "verification.json").exists()


def test_onnx_without_the_extra_names_it(run: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: import raises ImportError
    result = invoke("export", run)
    assert result.exit_code == 1
    assert result.output == ('Error: --format onnx needs onnxscript, which catsdogs installs as an extra: '
                             'pip install "catsdogs[export]"\n')
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = invoke("predict", "--model", model, tmp_path)
    assert result.exit_code == 1
    assert result.output == ('Error: ONNX files need onnxruntime, which catsdogs installs as an extra: '
                             'pip install "catsdogs[export]"\n')
    assert invoke("export", run, "--format", "torchscript", "--verify-n", "2").exit_code == 0  # needs no extra


def test_bad_combinations_and_files_are_one_line_errors(run: Path, tmp_path: Path) -> None:
    result = invoke("export", run, "--format", "torchscript", "--quantize", "int8")
    assert result.exit_code == 2 and "--quantize int8 works on ONNX files: use --format onnx" in result.output
    result = invoke("export", run, "--out", tmp_path / "model.bin")
    assert result.exit_code == 2 and "an ONNX file's name ends in .onnx, and only an ONNX file's does" in result.output
    result = invoke("export", run, "--verify-on", tmp_path / "nowhere")
    assert result.exit_code == 2 and "nowhere is not a folder of photos" in result.output
    foreign = tmp_path / "foreign.onnx"
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    result = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [value], [result])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(foreign))
    result = invoke("predict", "--model", foreign, run)
    assert result.exit_code == 1 and "was not exported by `catsdogs export`" in result.output
    result = invoke("predict", "--model", run / "best.pt", run)
    assert result.exit_code == 1 and "neither an ONNX model (.onnx) nor a TorchScript file" in result.output
    result = invoke("predict", "--model", foreign, "--run", run, run)
    assert result.exit_code == 2 and "drop --run and --checkpoint" in result.output


def test_verify_on_a_folder_without_class_folders_compares_without_accuracy(run: Path, tiny_run) -> None:
    result = invoke("export", run, "--format", "torchscript", "--verify-on", tiny_run[1] / "test" / "Dog")
    assert result.exit_code == 0, result.output
    assert "on 6 photos of" in result.output and "accuracy: no labels (photos not in class folders)" in result.output


def write_photos(folder: Path) -> list[Path]:
    """Photos of the sizes that take each path of the resize: shrink (area), enlarge, mixed, exact, grey, PNG."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    paths = []
    for index, (height, width) in enumerate([(150, 130), (400, 301), (60, 50), (200, 70), (96, 96), (97, 300)]):
        base = np.linspace(0, 255, width)[None, :, None] * np.array([0.8, 0.3, 0.5]) + rng.normal(0, 30, (height, 1, 1))
        pixels = np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{index}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    Image.fromarray(pixels[:, :, 0]).save(folder / "grey.jpg")
    Image.fromarray(pixels).save(folder / "lossless.png")
    return sorted(folder.iterdir())


def test_predict_with_the_onnx_file_equals_predict_with_the_run(run: Path, tmp_path: Path) -> None:
    photos = write_photos(tmp_path / "photos")
    assert invoke("export", run).exit_code == 0
    by_run = invoke("predict", "--run", run, tmp_path / "photos", "--tta")
    by_file = invoke("predict", "--model", run / "export" / "model.onnx", tmp_path / "photos", "--tta")
    assert by_run.exit_code == by_file.exit_code == 0
    assert by_file.stdout == by_run.stdout and len(by_file.stdout.splitlines()) == len(photos)
    for name, source in (("run.csv", ["--run", run]), ("file.csv", ["--model", run / "export" / "model.onnx"])):
        assert invoke("predict", *source, tmp_path / "photos", "--out", tmp_path / name).exit_code == 0
    run_rows = (tmp_path / "run.csv").read_text().splitlines()
    file_rows = (tmp_path / "file.csv").read_text().splitlines()
    assert run_rows[0] == file_rows[0]
    for a, b in zip(run_rows[1:], file_rows[1:]):  # six decimals: the last digit may round the other way
        np.testing.assert_allclose([float(v) for v in a.split(",")[3:5]], [float(v) for v in b.split(",")[3:5]],
                                   atol=2e-6)


def doc_snippet() -> str:
    text = (ROOT / "docs" / "export.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    return code


def test_the_docs_snippet_gives_predicts_probabilities_without_torch_or_catsdogs(run: Path, tmp_path: Path) -> None:
    photos = write_photos(tmp_path / "photos")
    assert invoke("export", run).exit_code == 0
    model = run / "export" / "model.onnx"
    script = tmp_path / "classify.py"
    script.write_text(doc_snippet())
    assert len([line for line in doc_snippet().splitlines() if line.strip()]) <= 30
    # -I: no PYTHONPATH, no user site; and these imports fail, as on a machine without them.
    guard = ("import sys\nfor name in ('torch', 'torchvision', 'catsdogs', 'cv2'): sys.modules[name] = None\n"
             f"sys.argv = {[str(script), str(model), *map(str, photos)]!r}\n"
             f"exec(compile(open({str(script)!r}).read(), {str(script)!r}, 'exec'))\n"
             "assert not {'torch', 'cv2', 'catsdogs'} & {m.split('.')[0] for m, v in sys.modules.items() if v}\n")
    done = subprocess.run([sys.executable, "-I", "-c", guard], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [re.fullmatch(r"(\w+) +(\d\.\d{6})  (.+)  ([\d. ]+)", line).groups() for line in done.stdout.splitlines()]
    snippet = {Path(path): [float(v) for v in probs.split()] for _, _, path, probs in rows}
    assert list(snippet) == photos
    from catsdogs.inference.predict import predict_photos

    expected = predict_photos(load_exported(model), photos, progress=False)
    np.testing.assert_allclose(np.array([snippet[p] for p in expected.paths]), expected.probs, atol=1e-4, rtol=0)
    # and it is the run's own prediction through PyTorch that it reproduces
    from catsdogs.inference.predict import load_trained

    by_run = predict_photos(load_trained(run, device="cpu"), photos, progress=False)
    np.testing.assert_allclose(np.array([snippet[p] for p in by_run.paths]), by_run.probs, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def photo_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_split(tmp_path_factory.mktemp("split"), per_class=(4, 1, 3), size=80)


def fake_run(root: Path, name: str, data: Path) -> Path:
    """A run folder holding a checkpoint of randomly initialised weights, at the model's smallest size."""
    size = MODELS.get(name).min_image_size
    cfg = TrainConfig(data=str(data), model=name, optim="adam", image_size=size, device="cpu", precision="fp32")
    torch.manual_seed(0)
    model = build_model(name, 2, size).eval()
    root.mkdir()
    write_text_atomic(root / "config.yaml", config_to_yaml(cfg))
    save_checkpoint({"config": cfg.to_dict(), "classes": ["Cat", "Dog"], "model": model.state_dict(), "epoch": 1},
                    root / "best.pt")
    return root


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_exports_and_verifies(name: str, fmt: str, photo_split: Path, tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", name, photo_split)
    lines: list[str] = []
    result = export.export_run(run, fmt, log=lines.append)
    check = result.verification
    assert check.passed and check.photos == 6 and check.class_differs == 0, "\n".join(lines)
    assert check.max_prob_diff <= 1e-4
    assert load_exported(result.path).image_size == MODELS.get(name).min_image_size
