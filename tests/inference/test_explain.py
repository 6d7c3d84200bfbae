"""Tests for catsdogs.inference.explain and `catsdogs explain`: Grad-CAM where the answer is known, every model, CLI."""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.inference.evaluate import evaluate_run
from catsdogs.inference.explain import MIN_CELLS, GradCAM, explain_photos, worst_mistakes
from catsdogs.inference.predict import load_trained, predict_photos
from catsdogs.training.hardware import Precision
from catsdogs.training.models import MODELS, build_model
from tests.helpers import invoke

PNG = b"\x89PNG\r\n\x1a\n"


def brightness_model() -> nn.Module:
    """Channel 0 is the pixel sum (a 1x1 conv); the Dog logit is its spatial mean, the Cat logit minus it."""
    conv = nn.Conv2d(3, 2, kernel_size=1)
    linear = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0] = 1.0
        linear.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    return nn.Sequential(conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)


def patch_image(size: int = 32) -> torch.Tensor:
    image = torch.zeros(1, 3, size, size)
    image[:, :, 4:12, 20:28] = 1.0  # a bright patch, top right
    return image


def test_gradcam_finds_the_evidence_where_it_is() -> None:
    cam = GradCAM(brightness_model(), 32)
    assert cam.layer == "1"  # the ReLU: the last map at least MIN_CELLS across (the pool is 1x1)
    heat, probs = cam(patch_image(), target=1)
    assert heat.shape == (1, 32, 32)
    assert float(heat[0, 4:12, 20:28].min()) == pytest.approx(1.0)
    outside = heat[0].clone()
    outside[4:12, 20:28] = 0
    assert float(outside.max()) == 0.0
    assert float(probs[0, 1]) > 0.5  # the patch pushes the Dog logit up


def test_gradcam_of_the_class_the_evidence_argues_against_is_empty() -> None:
    heat, _ = GradCAM(brightness_model(), 32)(patch_image(), target=0)
    assert float(heat.abs().max()) == 0.0


def test_gradcam_explains_the_predicted_class_by_default() -> None:
    cam = GradCAM(brightness_model(), 32)
    by_default, probs = cam(patch_image())
    assert int(probs[0].argmax()) == 1
    assert torch.equal(by_default, cam(patch_image(), target=1)[0])


def test_gradcam_leaves_the_model_alone() -> None:
    model = brightness_model().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, probs = GradCAM(model, 32)(patch_image())
    assert model[1].inplace is True  # only the private copy loses its in-place activations
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    with torch.no_grad():
        assert torch.allclose(probs, torch.softmax(model(patch_image()), 1), atol=1e-6)


def traced_maps(model: nn.Module, size: int) -> list[tuple[str, tuple[int, ...]]]:
    """(module name, C x H x W) of every spatial map one image passes through, in the order the modules finish."""
    names = {module: name for name, module in model.named_modules() if name}
    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = [module.register_forward_hook(
        lambda m, _i, out: seen.append((names[m], tuple(out.shape[1:]))) if out.dim() == 4 else None)
        for module in names]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def map_explained(cam: GradCAM, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Run Grad-CAM and return its heat maps and the shape of the feature map it actually read."""
    read: list[tuple[int, ...]] = []
    hook = cam.module.register_forward_hook(lambda _m, _i, out: read.append(tuple(out.shape[1:])))
    try:
        heat, _ = cam(images)
    finally:
        hook.remove()
    return heat, read[-1]


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("at", ["minimum", "128"])
def test_every_model_is_explained_at_its_deepest_map_still_5_cells_across(name: str, at: str) -> None:
    size = MODELS.get(name).min_image_size if at == "minimum" else max(MODELS.get(name).min_image_size, 128)
    torch.manual_seed(0)
    model = build_model(name, 2, size).eval()
    cam = GradCAM(model, size)
    heat, shape = map_explained(cam, torch.randn(2, 3, size, size))
    assert len(shape) == 3 and min(shape[1:]) >= MIN_CELLS, f"{name} at {size}px reads {cam.layer} {shape}"
    maps = traced_maps(model, size)
    last_read = max(i for i, (layer, _) in enumerate(maps) if layer == cam.layer)
    deeper = [(layer, map_shape) for layer, map_shape in maps[last_read + 1:] if min(map_shape[1:]) >= MIN_CELLS]
    assert deeper == [], f"{cam.layer} {shape} is not the deepest map at least {MIN_CELLS} across"
    assert heat.shape == (2, size, size) and torch.isfinite(heat).all()
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0 + 1e-6


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_can_be_explained(name: str) -> None:
    size = max(MODELS.get(name).min_image_size, 64)
    torch.manual_seed(0)
    model = build_model(name, 2, size).eval()
    heat, probs = GradCAM(model, size)(torch.randn(2, 3, size, size))
    assert heat.shape == (2, size, size) and torch.isfinite(heat).all()
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0 + 1e-6
    assert torch.allclose(probs.sum(1), torch.ones(2), atol=1e-5)


def test_cnn3_at_128px_reads_a_map_that_can_still_say_where() -> None:
    # Its last pool is 1x1 at 128 px; the choice falls back to the deepest map at least 5 cells across.
    cam = GradCAM(build_model("cnn3", 2, 128), 128)
    heat, shape = map_explained(cam, torch.randn(1, 3, 128, 128))
    assert (cam.layer, shape) == ("features.5", (64, 7, 7))
    assert heat.shape == (1, 128, 128)


def test_without_a_map_5_cells_across_the_widest_is_read() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    cam = GradCAM(model, 16)  # maps of 4x4, 2x2 (the conv, then the ReLU) and 1x1: none 5 across
    heat, shape = map_explained(cam, torch.randn(1, 3, 16, 16))
    assert (cam.layer, shape) == ("0", (4, 4, 4))
    assert heat.shape == (1, 16, 16)


def test_a_model_without_a_feature_map_cannot_be_explained() -> None:
    with pytest.raises(CatsdogsError, match="Sequential has no convolutional feature map to explain"):
        GradCAM(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), 8)


@pytest.mark.parametrize(("layer", "message"), [
    ("head.3", "layer head.3 has no spatial feature map (it outputs 2 values per photo): "),  # a Linear
    ("head.1", "layer head.1 has no spatial feature map (it outputs 192 values per photo): "),  # a Flatten
    ("head.0", "layer head.0 has no spatial feature map (it outputs a 192x1x1 map): "),  # the global pool
    ("head.9", "no layer head.9 in the model; "),
])
def test_a_layer_that_cannot_say_where_is_refused_with_the_ones_that_can(layer: str, message: str) -> None:
    model = build_model("bncnn-s", 2, 128)
    with pytest.raises(UsageError) as caught:
        GradCAM(model, 128, layer)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(message + "choose one of features (192x8x8), features.20 (192x8x8), ")
    offered = re.findall(r"([\w.]+) \((\d+)x(\d+)x(\d+)\)", text)
    assert len(offered) == 8 and text.endswith(" or 14 shallower")
    maps = dict(traced_maps(model, 128))
    assert all(maps[name] == tuple(map(int, shape)) and min(maps[name][1:]) >= 2 for name, *shape in offered)
    assert [name for name, *_ in offered][-1] == "features.14"  # deepest first: the 16x16 maps come after


def test_a_layer_the_user_names_is_used() -> None:
    cam = GradCAM(build_model("bncnn-s", 2, 128), 128, "features.14")
    assert cam.layer == "features.14"
    heat, _ = cam(torch.randn(1, 3, 128, 128))
    assert heat.shape == (1, 128, 128)


def write_predictions(path: Path, rows: list[tuple[str, str, str, float]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "predicted", "p_Cat", "p_Dog"])
        for photo, label, predicted, p_dog in rows:
            writer.writerow([photo, label, predicted, 1 - p_dog, p_dog])


def test_worst_mistakes_are_the_confident_wrong_ones(tmp_path: Path) -> None:
    write_predictions(tmp_path / "predictions.csv", [
        ("a.jpg", "Cat", "Dog", 0.6), ("b.jpg", "Dog", "Dog", 0.99), ("c.jpg", "Dog", "Cat", 0.05),
        ("d.jpg", "Cat", "Dog", 0.9), ("e.jpg", "Cat", "Cat", 0.01)])
    assert worst_mistakes(tmp_path, 2) == {Path("c.jpg"): "Dog", Path("d.jpg"): "Cat"}  # 0.95 and 0.9 sure
    assert list(worst_mistakes(tmp_path, 10)) == [Path("c.jpg"), Path("d.jpg"), Path("a.jpg")]


def test_worst_mistakes_need_an_evaluation_with_mistakes(tmp_path: Path) -> None:
    with pytest.raises(CatsdogsError, match="run `catsdogs evaluate"):
        worst_mistakes(tmp_path, 3)
    write_predictions(tmp_path / "predictions.csv", [("a.jpg", "Cat", "Cat", 0.2)])
    with pytest.raises(CatsdogsError, match="made no mistakes on its 1 photos"):
        worst_mistakes(tmp_path, 3)


def test_explain_command_writes_figures_and_a_list(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    photos = [data / "test" / "Cat" / "0.jpg", data / "test" / "Dog" / "0.jpg"]  # the same file name twice
    result = invoke("explain", "--run", str(run_dir), "--device", "cpu", "--out", str(tmp_path / "x"),
                    *map(str, photos))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["0-2_gradcam.png", "0_gradcam.png",
                                                                 "explanations.csv"]
    assert (tmp_path / "x" / "0-2_gradcam.png").read_bytes()[:8] == PNG
    with (tmp_path / "x" / "explanations.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["photo"] for row in rows] == list(map(str, photos))
    assert all(row["explained"] == row["predicted"] and row["error"] == "" for row in rows)
    assert "2 photos explained at layer" in result.output


def test_a_photo_whose_name_is_not_utf8_is_explained(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    folder = tmp_path / "photos"
    folder.mkdir()
    odd = os.fsdecode(os.fsencode(folder) + b"/caf\xe9.jpg")  # Linux allows any bytes in a name
    shutil.copyfile(data / "test" / "Cat" / "0.jpg", odd)
    result = invoke("explain", "--run", str(run_dir), "--device", "cpu", "--out", str(tmp_path / "x"), odd)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "x" / "explanations.csv").read_text(encoding="utf-8").splitlines()))
    assert [row["photo"] for row in rows] == [str(folder / "caf\\xe9.jpg")] and rows[0]["error"] == ""
    assert rows[0]["figure"] == "caf\\xe9_gradcam.png" and "caf\\xe9.jpg" in result.output  # escaped, printable
    assert (tmp_path / "x" / os.fsdecode(b"caf\xe9_gradcam.png")).read_bytes()[:8] == PNG
    predicted = invoke("predict", "--run", str(run_dir), "--device", "cpu", odd)
    assert predicted.exit_code == 0 and predicted.stdout.rstrip().endswith(str(folder / "caf\\xe9.jpg"))


def test_explain_mistakes_reads_the_last_evaluation(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    evaluate_run(run, data=str(data), device="cpu", progress=False)
    assert (run / "predictions.csv").is_file()
    # The tiny run may well make no mistakes: state some, on real files, most confident first: 2, 0, 1.
    photos = [data / "test" / "Cat" / f"{i}.jpg" for i in range(3)]
    write_predictions(run / "predictions.csv", [(str(photos[0]), "Cat", "Dog", 0.8),
                                                (str(photos[1]), "Cat", "Dog", 0.7),
                                                (str(photos[2]), "Cat", "Dog", 0.9)])
    result = invoke("explain", "--run", str(run), "--device", "cpu", "--mistakes", "2", "--target", "Dog")
    assert result.exit_code == 0, result.output
    with (run / "explain" / "explanations.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["photo"] for row in rows] == [str(photos[2]), str(photos[0])]
    assert all(row["true"] == "Cat" and row["explained"] == "Dog" for row in rows)
    assert (run / "explain" / "2_gradcam.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize(("args", "code", "message"), [
    ([], 2, "name photos (or folders) to explain, or use --mistakes N"),
    (["--mistakes", "2", "PHOTO"], 2, "not both"),
    (["--target", "Horse", "PHOTO"], 2, "--target must be one of Cat, Dog"),
    (["--layer", "nonsense", "PHOTO"], 2, "no layer nonsense in the model; choose one of features.7 (128x2x2), "
                                          "features.6 (128x2x2), features.5 (64x5x5), "),
    (["--layer", "classifier.4", "PHOTO"], 2, "layer classifier.4 has no spatial feature map (it outputs 2 values "
                                              "per photo): choose one of features.7 (128x2x2), "),
    (["--layer", "features.8", "PHOTO"], 2, "layer features.8 has no spatial feature map (it outputs a 128x1x1 "
                                            "map): choose one of features.7 (128x2x2), "),
])
def test_explain_command_errors_are_one_line(tiny_run, tmp_path: Path, monkeypatch, args, code, message) -> None:
    run_dir, data = tiny_run
    monkeypatch.chdir(tmp_path)
    args = [str(data / "test" / "Cat" / "1.jpg") if a == "PHOTO" else a for a in args]
    result = invoke("explain", "--run", str(run_dir), "--device", "cpu", "--out", "x", *args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0], result.output


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_explaining_into_the_same_folder_again_keeps_the_earlier_list(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    trained = load_trained(run_dir, device="cpu")
    out = tmp_path / "x"
    cat0, cat1, cat2, dog0 = (data / "test" / "Cat" / "0.jpg", data / "test" / "Cat" / "1.jpg",
                              data / "test" / "Cat" / "2.jpg", data / "test" / "Dog" / "0.jpg")
    explain_photos(trained, [cat0, cat1, cat2], out, progress=False)
    cat0_figure = (out / "0_gradcam.png").read_bytes()
    (out / "2_gradcam.png").unlink()  # a figure the user deleted: its row goes too
    done, unreadable, _ = explain_photos(trained, [dog0, cat1], out, target="Dog", progress=False)
    assert [(item.photo, item.figure.name) for item in done] == [(dog0, "0-2_gradcam.png"), (cat1, "1_gradcam.png")]
    assert unreadable == []
    rows = read_rows(out / "explanations.csv")
    assert [(row["photo"], row["figure"], row["explained"]) for row in rows] == [
        (str(cat0), "0_gradcam.png", trained.classes[int(predict_photos(trained, [cat0], progress=False).probs.argmax())]),
        (str(cat1), "1_gradcam.png", "Dog"),  # explained again: replaced where it was
        (str(dog0), "0-2_gradcam.png", "Dog"),  # another photo's 0.jpg: a figure name of its own
    ]
    assert list(rows[0]) == ["photo", "predicted", "probability", "explained", "true", "figure", "error"]
    assert (out / "0_gradcam.png").read_bytes() == cat0_figure
    assert sorted(p.name for p in out.iterdir()) == ["0-2_gradcam.png", "0_gradcam.png", "1_gradcam.png",
                                                     "explanations.csv"]


def test_a_photo_named_from_another_folder_is_the_same_row(tiny_run, tmp_path: Path, monkeypatch) -> None:
    run_dir, data = tiny_run
    trained = load_trained(run_dir, device="cpu")
    out = tmp_path / "x"
    explain_photos(trained, [data / "test" / "Cat" / "0.jpg"], out, progress=False)
    monkeypatch.chdir(data / "test")
    explain_photos(trained, [Path("Cat") / "0.jpg"], out, progress=False)  # the same photo, relative
    rows = read_rows(out / "explanations.csv")
    assert [(row["photo"], row["figure"]) for row in rows] == [(str(data / "test" / "Cat" / "0.jpg"), "0_gradcam.png")]
    assert sorted(p.name for p in out.iterdir()) == ["0_gradcam.png", "explanations.csv"]


def test_a_list_explain_did_not_write_is_left_alone(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    (tmp_path / "explanations.csv").write_text("name,score\nx,1\n")
    with pytest.raises(CatsdogsError, match="explanations.csv is not a list written by `catsdogs explain`"):
        explain_photos(load_trained(run_dir, device="cpu"), [data / "test" / "Cat" / "0.jpg"], tmp_path,
                       progress=False)
    assert (tmp_path / "explanations.csv").read_text() == "name,score\nx,1\n"
    assert not list(tmp_path.glob("*.png"))


def test_explain_reports_the_probabilities_predict_does(tiny_run, tmp_path: Path) -> None:
    run_dir, data = tiny_run
    # At bf16 (a CPU's autocast) the run's model and Grad-CAM's fp32 copy disagree in the 4th decimal.
    trained = dataclasses.replace(load_trained(run_dir, device="cpu"),
                                  precision=Precision("bf16", torch.bfloat16, False, "bf16 autocast"))
    photos = sorted((data / "test").rglob("*.jpg"))
    predicted = predict_photos(trained, photos, progress=False)
    done, _, _ = explain_photos(trained, photos, tmp_path, progress=False)
    rows = read_rows(tmp_path / "explanations.csv")
    assert [row["photo"] for row in rows] == list(map(str, predicted.paths))
    assert [row["predicted"] for row in rows] == predicted.predicted
    assert [row["explained"] for row in rows] == predicted.predicted  # the map explains the class reported
    assert [float(row["probability"]) for row in rows] == pytest.approx(predicted.probs.max(1).tolist(), abs=1e-6)
    assert [item.probability for item in done] == pytest.approx(predicted.probs.max(1).tolist(), abs=1e-6)


def test_the_mistakes_are_read_as_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    # predictions.csv is written as UTF-8; under an ASCII locale open() without an encoding could not read it.
    (tmp_path / "predictions.csv").write_text("path,label,predicted,p_Chat-é,p_Chien\n"
                                              "test/Chat-é/1.jpg,Chat-é,Chien,0.100000,0.900000\n"
                                              "test/Chien/2.jpg,Chien,Chien,0.200000,0.800000\n", encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    script = ("import locale, sys; from catsdogs.inference.explain import worst_mistakes; "
              "print(locale.getpreferredencoding(False)); "
              "print(ascii({str(k): v for k, v in worst_mistakes(sys.argv[1], 5).items()}))")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    encoding, mistakes = done.stdout.splitlines()
    assert encoding == "ANSI_X3.4-1968"  # the locale really was ASCII
    assert mistakes == ascii({"test/Chat-é/1.jpg": "Chat-é"})
