"""Evaluating a run: where results go, plain class folders, other checkpoints, unreadable photos."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from catsdogs.errors import CatsdogsError
from catsdogs.inference.evaluate import evaluate_run
from catsdogs.training.checkpoint import load_checkpoint, save_checkpoint


def test_evaluating_other_photos_never_replaces_the_run_s_own_results(tiny_run, tmp_path) -> None:

    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    own = evaluate_run(run, device="cpu", progress=False)
    assert own.metrics_path == run / "metrics.json"
    first = own.metrics_path.read_text()
    other = Path(shutil.copytree(data, tmp_path / "new-photos"))
    for index in range(3):  # a different set: half the dogs gone
        (other / "test" / "Dog" / f"{index}.jpg").unlink()
    foreign = evaluate_run(run, data=str(other), device="cpu", progress=False)
    assert foreign.metrics_path == run / "eval-new-photos" / "metrics.json"
    assert foreign.predictions_path.parent == foreign.figure_path.parent == run / "eval-new-photos"
    assert foreign.metrics["images"] == 9 and own.metrics["images"] == 12
    assert own.metrics_path.read_text() == first
    chosen = evaluate_run(run, data=str(other), device="cpu", progress=False, out_dir=tmp_path / "elsewhere")
    assert chosen.metrics_path == tmp_path / "elsewhere" / "metrics.json"


def test_a_folder_of_class_subfolders_is_measured_whole_without_a_cache(tiny_run, tmp_path) -> None:

    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    photos = Path(shutil.copytree(data / "test", tmp_path / "my-photos"))  # Cat/ and Dog/, no split folders
    shutil.copy(data / "val" / "Dog" / "0.jpg", photos / "Dog" / "extra.jpg")
    result = evaluate_run(run, data=str(photos), device="cpu", progress=False)
    assert result.metrics["split"] == "all" and result.metrics["images"] == 13
    assert result.metrics["per_class"]["Dog"]["support"] == 7
    assert result.metrics_path == run / "eval-my-photos" / "metrics.json"
    assert sorted(p.name for p in photos.iterdir()) == ["Cat", "Dog"]  # nothing written into the user's folder
    with result.predictions_path.open() as handle:
        assert sum(1 for _ in handle) == 14


def test_other_checkpoints_write_beside_best_and_a_re_split_test_set_is_flagged(tiny_run, tmp_path) -> None:

    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    best = evaluate_run(run, device="cpu", progress=False)
    assert "warning" not in best.metrics
    last = evaluate_run(run, checkpoint="last", device="cpu", progress=False)
    assert last.metrics_path == run / "metrics_last.json" and last.predictions_path == run / "predictions_last.csv"
    other = evaluate_run(run, checkpoint=str(run / "best.pt"), split="val", device="cpu", progress=False)
    assert other.metrics_path == run / "metrics_val_best.json"
    assert json.loads(best.metrics_path.read_text())["checkpoint"] == str(run / "best.pt")  # not replaced
    # Point the copied run at a copy of its split, then re-split that copy under it.
    copy = Path(shutil.copytree(data, tmp_path / "data"))
    state = load_checkpoint(run / "best.pt")
    state["config"]["data"] = str(copy)
    save_checkpoint(state, run / "best.pt")
    assert "warning" not in evaluate_run(run, device="cpu", progress=False).metrics  # same photos, other place
    (copy / "train" / "Dog" / "0.jpg").rename(copy / "test" / "Dog" / "from-train.jpg")
    flagged = evaluate_run(run, device="cpu", progress=False).metrics
    assert "has been split again since this run was trained" in flagged["warning"]
    assert flagged["images"] == 13


def test_unreadable_photos_are_recorded_and_a_failed_evaluation_leaves_no_folder(tiny_run, tmp_path) -> None:

    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    photos = Path(shutil.copytree(data / "test", tmp_path / "mixed"))
    (photos / "Cat" / "text.jpg").write_text("not a photo")
    (photos / "Dog" / "zero.jpg").write_bytes(b"")
    result = evaluate_run(run, data=str(photos), device="cpu", progress=False)
    assert result.metrics["images"] == 12
    assert result.metrics["unreadable_images"] == [str(photos / "Cat" / "text.jpg"), str(photos / "Dog" / "zero.jpg")]
    # A folder whose classes the model does not know: one clear error, and no empty eval-* folder.
    (tmp_path / "foxes" / "Fox").mkdir(parents=True)
    (tmp_path / "foxes" / "Cat").mkdir()
    with pytest.raises(CatsdogsError, match=r"has class folders \['Cat', 'Fox'\], but the model knows"):
        evaluate_run(run, data=str(tmp_path / "foxes"), device="cpu", progress=False)
    (tmp_path / "flat").mkdir()
    shutil.copy(data / "test" / "Cat" / "0.jpg", tmp_path / "flat" / "cat.0.jpg")
    with pytest.raises(CatsdogsError, match="has no class subfolders .* use `catsdogs predict`"):
        evaluate_run(run, data=str(tmp_path / "flat"), device="cpu", progress=False)
    assert sorted(p.name for p in run.glob("eval-*")) == ["eval-mixed"]
    with pytest.raises(CatsdogsError, match=r"--data .*nowhere does not exist: pass a split folder, or a folder"):
        evaluate_run(run, data=str(tmp_path / "nowhere"), device="cpu", progress=False)
    with pytest.raises(CatsdogsError, match=r"--data .*0.jpg is not a folder"):
        evaluate_run(run, data=str(data / "test" / "Cat" / "0.jpg"), device="cpu", progress=False)


def test_names_that_are_not_utf8_are_read_and_written_escaped_and_tiny_photos_left_out(tiny_run, tmp_path) -> None:
    from PIL import Image

    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    photos = Path(shutil.copytree(data / "test", tmp_path / os.fsdecode(b"f\xf6tos")))  # Latin-1, as old zips hold
    (photos / "Cat" / "0.jpg").rename(photos / "Cat" / os.fsdecode(b"\xff.jpg"))
    Image.new("RGB", (1, 1), (200, 60, 60)).save(photos / "Dog" / "pixel.png")
    result = evaluate_run(run, data=str(photos), device="cpu", progress=False)
    assert result.metrics["images"] == 12  # the odd name is measured, the pixel is not
    metrics = json.loads(result.metrics_path.read_bytes().decode("utf-8"))  # strict: valid UTF-8
    shown = str(tmp_path / "f\\xf6tos")
    assert metrics["data"] == shown and metrics["unreadable_images"] == [f"{shown}/Dog/pixel.png"]
    with result.predictions_path.open(encoding="utf-8", newline="") as handle:
        paths = [row["path"] for row in csv.DictReader(handle)]
    assert f"{shown}/Cat/\\xff.jpg" in paths and len(paths) == 12
    again = evaluate_run(run, data=str(photos), device="cpu", progress=False)  # finds its own results again
    assert again.metrics_path == result.metrics_path


def test_photos_of_only_some_classes_are_measured(tiny_run, tmp_path) -> None:
    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    cats = tmp_path / "only-cats"
    shutil.copytree(data / "test" / "Cat", cats / "Cat")
    metrics = evaluate_run(run, data=str(cats), device="cpu", progress=False).metrics
    assert metrics["images"] == 6 and metrics["per_class"]["Cat"]["support"] == 6
    assert metrics["per_class"]["Dog"]["support"] == 0 and metrics["roc_auc"] is None
    assert metrics["accuracy"] == pytest.approx(metrics["confusion_matrix"][0][0] / 6)
    (cats / "Dog").mkdir()  # an empty class folder is a class without photos, as a missing one
    assert evaluate_run(run, data=str(cats), device="cpu", progress=False).metrics["images"] == 6
    (cats / "Cat").rename(tmp_path / "Cat-later")
    (cats / "Cat").mkdir()
    with pytest.raises(CatsdogsError, match="holds no photo files .* in its class folders"):
        evaluate_run(run, data=str(cats), device="cpu", progress=False)


def test_a_link_that_puts_a_photo_under_two_classes_leaves_it_out(tiny_run, tmp_path) -> None:
    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    photos = Path(shutil.copytree(data / "test", tmp_path / "photos"))
    (photos / "Cat" / "dogs").symlink_to("../Dog", target_is_directory=True)  # every dog also under Cat
    (photos / "Dog" / "again").symlink_to(".", target_is_directory=True)  # the dogs twice under Dog
    (photos / "notes.txt").write_text("beside the class folders")
    metrics = evaluate_run(run, data=str(photos), device="cpu", progress=False).metrics
    assert metrics["per_class"]["Cat"]["support"] == 6 and metrics["per_class"]["Dog"]["support"] == 0
    reasons = {(Path(item["path"]).relative_to(photos).as_posix(), item["reason"]) for item in metrics["left_out"]}
    assert ("Cat/dogs/0.jpg", "the same file under Cat and Dog (through a link)") in reasons
    assert ("Dog/0.jpg", "the same file under Cat and Dog (through a link)") in reasons
    assert ("notes.txt", "not in a class folder") in reasons
    (photos / "Cat" / "dogs").unlink()
    metrics = evaluate_run(run, data=str(photos), device="cpu", progress=False).metrics
    assert metrics["per_class"]["Dog"]["support"] == 6  # Dog/again/* is the same files: counted once


def test_two_folders_of_the_same_name_get_their_own_results_and_user_files_are_kept(tiny_run, tmp_path) -> None:
    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    first = Path(shutil.copytree(data / "test", tmp_path / "a" / "photos"))
    second = Path(shutil.copytree(data / "val", tmp_path / "b" / "photos"))
    a = evaluate_run(run, data=str(first), device="cpu", progress=False)
    b = evaluate_run(run, data=str(second), device="cpu", progress=False)
    assert a.metrics_path == run / "eval-photos" / "metrics.json"
    assert b.metrics_path == run / "eval-photos-2" / "metrics.json"
    assert json.loads(a.metrics_path.read_text())["data"] == str(first)  # absolute, and not replaced
    again = evaluate_run(run, data=str(first), device="cpu", progress=False, tta=True)
    assert again.metrics_path == run / "eval-photos" / "metrics_tta.json"  # the same photos' folder
    # --out: a file of the user's, or another folder's results, is never replaced.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "predictions.csv").write_text("my own notes\n")
    with pytest.raises(CatsdogsError, match="predictions.csv exists and is not a result of `catsdogs evaluate`"):
        evaluate_run(run, data=str(first), device="cpu", progress=False, out_dir=mine)
    assert (mine / "predictions.csv").read_text() == "my own notes\n"
    with pytest.raises(CatsdogsError, match=f"already holds the evaluation of {run / 'best.pt'} on {first}"):
        evaluate_run(run, data=str(second), device="cpu", progress=False, out_dir=run / "eval-photos")
    evaluate_run(run, data=str(first), device="cpu", progress=False, out_dir=run / "eval-photos")  # updating is fine
    other_run = Path(shutil.copytree(run_dir, tmp_path / "other-run"))  # another run, evaluated or not
    for data_given in (None, str(first)):
        with pytest.raises(CatsdogsError, match=f"--out {other_run} is a run folder, whose metrics.json is its own"):
            evaluate_run(run, data=data_given, device="cpu", progress=False, out_dir=other_run)
    with pytest.raises(CatsdogsError, match=f"--out {run} is a run folder"):  # its own folder, for other photos
        evaluate_run(run, data=str(first), device="cpu", progress=False, out_dir=run)
    with pytest.raises(CatsdogsError, match=f"--out {first / 'results'} is inside {first}, a folder of photos"):
        evaluate_run(run, data=str(first), device="cpu", progress=False, out_dir=first / "results")
    assert not (first / "results").exists()


def test_photos_behind_folder_links_are_measured_and_what_else_is_there_is_recorded(tiny_run, tmp_path) -> None:
    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    photos = tmp_path / "new"
    shutil.copytree(data / "test" / "Cat", photos / "Cat")
    (photos / "Dog").mkdir()
    (photos / "Dog" / "batch2").symlink_to(data / "test" / "Dog", target_is_directory=True)  # the only dogs
    shutil.copy(data / "test" / "Cat" / "0.jpg", photos / "Cat" / "._0.jpg")  # macOS's metadata copy
    (photos / "Cat" / "photo.heic").write_bytes(b"\0" * 10)
    (photos / "Cat" / ".ipynb_checkpoints").mkdir()
    metrics = evaluate_run(run, data=str(photos), device="cpu", progress=False).metrics
    assert metrics["per_class"]["Dog"]["support"] == 6 and metrics["images"] == 12
    assert sorted((Path(item["path"]).name, item["reason"]) for item in metrics["left_out"]) == [
        ("._0.jpg", "hidden file"), (".ipynb_checkpoints", "hidden or metadata folder, not searched"),
        ("photo.heic", "not named as a photo (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp)")]


def test_photos_the_run_learned_from_are_counted_and_flagged(tiny_run, tmp_path) -> None:
    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    copy = Path(shutil.copytree(data, tmp_path / "data"))
    rows = ["path,class,split,sha256,width,height,file"]
    for file in sorted(copy.glob("*/*/*.jpg")):
        split, name = file.parent.parent.name, file.parent.name
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        rows.append(f"{name}/{file.name},{name},{split},{digest},96,96,{file.name}")
    (copy / "manifest.csv").write_text("\n".join(rows) + "\n")
    state = load_checkpoint(run / "best.pt")
    state["config"]["data"] = str(copy)
    save_checkpoint(state, run / "best.pt")
    mixed = Path(shutil.copytree(data / "test", tmp_path / "mixed"))
    for index in range(3):
        shutil.copy(data / "train" / "Cat" / f"{index}.jpg", mixed / "Cat" / f"seen-{index}.jpg")
    shutil.copy(data / "val" / "Dog" / "0.jpg", mixed / "Dog" / "seen-val.jpg")
    metrics = evaluate_run(run, data=str(mixed), device="cpu", progress=False).metrics
    assert metrics["seen_in_training"] == 4 and metrics["images"] == 16
    assert metrics["warning"].startswith("4 of these 16 photos are in the train or val split this run learned from")
    clean = evaluate_run(run, data=str(copy / "test"), device="cpu", progress=False).metrics
    assert clean["seen_in_training"] == 0 and "warning" not in clean


def test_out_is_judged_where_it_lands_and_photo_folders_stay_untouched(tiny_run, tmp_path) -> None:
    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    copy = Path(shutil.copytree(data, tmp_path / "data"))
    state = load_checkpoint(run / "best.pt")
    state["config"]["data"] = str(copy)
    save_checkpoint(state, run / "best.pt")
    photos = Path(shutil.copytree(data / "val", tmp_path / "photos"))
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "metrics.json").write_text("{}")
    with pytest.raises(CatsdogsError, match="metrics.json exists and is not a result of `catsdogs evaluate`"):
        evaluate_run(run, data=str(photos), device="cpu", progress=False, out_dir=keep / "missing" / "..")
    assert (keep / "metrics.json").read_text() == "{}" and not (keep / "missing").exists()
    with pytest.raises(CatsdogsError, match=f"--out {copy / 'test' / 'Cat'} is inside {copy}, a folder of photos"):
        evaluate_run(run, device="cpu", progress=False, out_dir=copy / "test" / "Cat")  # the run's own split
    elsewhere = tmp_path / "elsewhere-cats"
    (photos / "Cat").rename(elsewhere)
    (photos / "Cat").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CatsdogsError, match=f"--out {elsewhere} is inside {elsewhere}, a folder of photos"):
        evaluate_run(run, data=str(photos), device="cpu", progress=False, out_dir=elsewhere)
    # Other checkpoints and --tta on the same photos sit beside each other, in one folder.
    first = evaluate_run(run, data=str(photos), device="cpu", progress=False)
    last = evaluate_run(run, data=str(photos), checkpoint="last", device="cpu", progress=False, tta=True)
    assert last.metrics_path == first.metrics_path.parent / "metrics_last_tta.json"
    # Two checkpoint files of one name would share a suffix: the second is refused, not written over the first.
    other = tmp_path / "elsewhere" / "best.pt"
    other.parent.mkdir()
    shutil.copy(run / "last.pt", other)
    evaluate_run(run, checkpoint=str(run / "best.pt"), device="cpu", progress=False)
    with pytest.raises(CatsdogsError, match=f"already holds the evaluation of {run / 'best.pt'}"):
        evaluate_run(run, checkpoint=str(other), device="cpu", progress=False)


def test_hard_links_are_the_same_file(tiny_run, tmp_path) -> None:
    run_dir, data = tiny_run
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    photos = Path(shutil.copytree(data / "test", tmp_path / "photos"))
    os.link(photos / "Dog" / "0.jpg", photos / "Cat" / "dog-0.jpg")  # the same file under both classes
    os.link(photos / "Cat" / "1.jpg", photos / "Cat" / "again-1.jpg")  # twice in one class
    metrics = evaluate_run(run, data=str(photos), device="cpu", progress=False).metrics
    assert (metrics["per_class"]["Cat"]["support"], metrics["per_class"]["Dog"]["support"]) == (6, 5)
    reasons = sorted((Path(item["path"]).name, item["reason"]) for item in metrics["left_out"])
    assert reasons == [("0.jpg", "the same file under Cat and Dog (through a link)"),
                       ("again-1.jpg", "the same file again (through a link)"),
                       ("dog-0.jpg", "the same file under Cat and Dog (through a link)")]
    cats, dogs = sorted((photos / "Cat").iterdir()), sorted((photos / "Dog").iterdir())
    for photo in cats:  # every photo under both classes: nothing left to measure
        os.link(photo, photos / "Dog" / f"cat-{photo.name}")
    for photo in dogs:
        os.link(photo, photos / "Cat" / f"from-dog-{photo.name}")
    with pytest.raises(CatsdogsError, match=f"every photo in {photos} was left out: "):
        evaluate_run(run, data=str(photos), device="cpu", progress=False)


def test_metrics_json_is_written_last_so_a_killed_evaluation_is_done_again(tiny_run, tmp_path, monkeypatch) -> None:
    # A study's run whose worker is killed mid-evaluation is retried; it evaluates again only without metrics.json.
    from catsdogs.inference import evaluate as evaluate_module

    run = Path(shutil.copytree(tiny_run[0], tmp_path / "run"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for the end of the process while predictions.csv is written

    monkeypatch.setattr(evaluate_module, "write_predictions", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(run, device="cpu", progress=False)
    assert not (run / "metrics.json").exists()
    monkeypatch.undo()
    done = evaluate_run(run, device="cpu", progress=False)
    assert done.metrics_path.is_file() and done.predictions_path.is_file()
