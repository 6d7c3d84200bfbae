"""Tests for catsdogs.data.split: file checks, leakage, layouts, determinism, ratios and reports."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from catsdogs.data.split import SPLITS, allocate, parse_ratios, split_dataset
from catsdogs.errors import CatsdogsError, UsageError
from tests.helpers import make_classes, read_rows, write_blank_png, write_photo

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shown(name: str) -> str:
    """A file name as split's CSV and JSON files hold it: bytes that are not UTF-8 as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@pytest.fixture()
def zoo(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    """A PetImages-like folder with every kind of good, odd and broken file; maps path -> expected fate."""
    source = tmp_path / "zoo"
    fate: dict[str, object] = {}
    for i in range(12):
        write_photo(source / "Cat" / f"c{i:02d}.jpg", seed=i)
        write_photo(source / "Dog" / f"d{i:02d}.jpg", seed=100 + i)
        fate[f"Cat/c{i:02d}.jpg"] = fate[f"Dog/d{i:02d}.jpg"] = "kept"
    odd = {"Cat/png-named.jpg": ("RGB", "PNG"), "Cat/anim.gif": ("P", "GIF"), "Cat/bitmap.bmp": ("RGB", "BMP"),
           "Cat/cmyk.jpg": ("CMYK", "JPEG"), "Cat/gray.jpg": ("L", "JPEG"), "Cat/rgba.png": ("RGBA", "PNG"),
           "Dog/palette.png": ("P", "PNG"), "Dog/UPPER.JPG": ("RGB", "JPEG"),
           "Dog/with space ü.jpg": ("RGB", "JPEG"), "Dog/犬 2.jpeg": ("RGB", "JPEG"),
           "Cat/nested/c00.jpg": ("RGB", "JPEG"),  # same name as Cat/c00.jpg, different photo
           os.fsdecode(b"Dog/caf\xe9.jpg"): ("RGB", "JPEG")}  # Latin-1 name from an old zip: not UTF-8
    for seed, (rel, (mode, fmt)) in enumerate(odd.items(), start=200):
        write_photo(source / rel, seed=seed, mode=mode, fmt=fmt)
        fate[rel] = "kept"
    whole = write_photo(tmp_path / "whole.jpg", seed=300, size=64).read_bytes()
    (source / "Cat/truncated.jpg").write_bytes(whole[: len(whole) * 3 // 4])
    with Image.open(source / "Cat/truncated.jpg") as header_only:  # only a full decode finds the cut
        assert header_only.size == (64, 64)
    (source / "Cat/empty.jpg").write_bytes(b"")
    (source / os.fsdecode(b"Dog/broken\xff.jpg")).write_bytes(b"")
    Image.new("RGB", (1, 1), (255, 0, 0)).save(source / "Cat/pixel.png")  # a tracking pixel
    Image.new("RGB", (9, 40), (0, 0, 255)).save(source / "Dog/sliver.png")
    (source / "Dog/text.jpg").write_text("not a photo\n")
    write_blank_png(source / "Dog/bomb.png", 23_000, 23_000)  # above 2x MAX_IMAGE_PIXELS: PIL raises
    write_blank_png(source / "Dog/bomb-warn.png", 16_000, 16_000)  # above 1x: PIL only warns, split refuses
    (source / "Cat/Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 thumbnails")
    (source / "Cat/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    write_photo(source / "Cat/._c03.jpg", seed=303)  # macOS's copy beside each file, and hidden photos
    write_photo(source / "Dog/.ipynb_checkpoints/d04-checkpoint.jpg", seed=304)
    write_photo(source / "__MACOSX/Cat/._c04.jpg", seed=305)
    (source / "Dog/notes.txt").write_text("vet on monday\n")
    (source / "README.txt").write_text("photos\n")
    write_photo(source / "stray.jpg", seed=301)
    (source / "Cat/dup.jpg").write_bytes((source / "Cat/c01.jpg").read_bytes())
    (source / "Dog/cat-photo.jpg").write_bytes((source / "Cat/c02.jpg").read_bytes())
    (source / "Cat/dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (source / "Cat/outside.jpg").symlink_to(write_photo(tmp_path / "elsewhere.jpg", seed=302))
    (source / "Cat/loop").symlink_to("..")
    (source / "Cat/self.jpg").symlink_to("self.jpg")
    (source / "Dog/link-to-d03.jpg").symlink_to("d03.jpg")
    os.mkfifo(source / "Dog/pipe.jpg")
    fate.update({
        "Cat/truncated.jpg": ("rejected", "truncated or corrupt data"), "Cat/empty.jpg": ("rejected", "empty file"),
        os.fsdecode(b"Dog/broken\xff.jpg"): ("rejected", "empty file"),
        "Cat/pixel.png": ("rejected", "under 10 pixels on a side"),
        "Dog/sliver.png": ("rejected", "under 10 pixels on a side"),
        "Dog/text.jpg": ("rejected", "not an image"), "Dog/bomb.png": ("rejected", "decompression bomb"),
        "Dog/bomb-warn.png": ("rejected", "decompression bomb"),
        "Cat/Thumbs.db": ("skipped", "not an image file"), "Cat/.DS_Store": ("skipped", "hidden file"),
        "Cat/._c03.jpg": ("skipped", "hidden file"),
        "Dog/.ipynb_checkpoints": ("skipped", "hidden or metadata folder, not searched"),
        "__MACOSX": ("skipped", "hidden or metadata folder, not searched"),
        "Dog/notes.txt": ("skipped", "not an image file"), "README.txt": ("skipped", "not an image file"),
        "stray.jpg": ("skipped", "not in a class folder"),
        "Cat/dup.jpg": ("duplicate", "duplicate"), "Dog/link-to-d03.jpg": ("duplicate", "duplicate"),
        "Cat/c02.jpg": ("conflict", "label conflict"), "Dog/cat-photo.jpg": ("conflict", "label conflict"),
        "Cat/dangling.jpg": ("rejected", "dangling link"),
        "Cat/outside.jpg": ("rejected", "link points outside the source"),
        "Cat/loop": ("skipped", "link loop"), "Cat/self.jpg": ("skipped", "link loop"),
        "Dog/pipe.jpg": ("skipped", "not a regular file"),
    })
    return source, fate


def test_every_file_is_kept_once_or_reported_with_its_reason(zoo, tmp_path):
    source, fate = zoo
    out = tmp_path / "data"
    summary = split_dataset(source, out, jobs=2, progress=False)

    kept = {shown(rel) for rel, verdict in fate.items() if verdict == "kept"}
    rows = read_rows(out / "manifest.csv")
    assert sorted(row["path"] for row in rows) == sorted(kept)
    source_of = {shown(rel): rel for rel in fate}
    for row in rows:
        assert row["class"] == row["path"].split("/")[0]
        target = out / row["file"]
        assert row["file"].split("/")[:2] == [row["split"], row["class"]]
        assert target.read_bytes() == (source / source_of[row["path"]]).read_bytes()
        assert [int(row["width"]), int(row["height"])] == [32, 32]
    written = [p for split in SPLITS for p in (out / split).rglob("*") if p.is_file()]
    assert len(written) == len(kept)  # so no photo lands in two splits
    names = {row["path"]: row["file"].rsplit("/", 1)[1] for row in rows}
    assert (names["Cat/c00.jpg"], names["Cat/nested/c00.jpg"]) == ("c00.jpg", "nested__c00.jpg")
    assert names["Dog/犬 2.jpeg"] == "犬 2.jpeg"
    assert names["Dog/caf\\xe9.jpg"] == "caf\\xe9.jpg"  # the Latin-1 name, as the manifest writes it

    left_out = {row["path"]: (row["status"], row["reason"]) for row in read_rows(out / "rejected.csv")}
    assert left_out == {shown(rel): verdict for rel, verdict in fate.items() if verdict != "kept"}
    details = {row["path"]: row["detail"] for row in read_rows(out / "rejected.csv")}
    assert details["Cat/pixel.png"] == "1x1 pixels, under 10 on a side"
    assert summary.found == len(fate)
    assert summary.kept + len(summary.rejected) + len(summary.skipped) + summary.duplicates_removed \
        + summary.conflicts == summary.found
    assert (summary.duplicates_removed, summary.conflicts) == (2, 2)
    assert summary.classes == ["Cat", "Dog"]
    report = summary.format()
    assert "Rejected, decompression bomb: 2" in report and "Skipped, not an image file: 3" in report
    assert "Skipped, hidden file: 2" in report and "Skipped, hidden or metadata folder, not searched: 2" in report
    assert f"total {summary.counts['train']['Cat'] + summary.counts['train']['Dog']:>6}" in report
    assert report.rstrip().endswith(f"Next: catsdogs train --optim adam --data {out}")
    again = split_dataset(source, out, jobs=2, progress=False)  # every odd name survives the record
    assert again.unchanged and again.rejected == summary.rejected and again.skipped == summary.skipped
    record = json.loads((out / "split.json").read_bytes().decode("utf-8"))  # strict UTF-8 too
    assert ["Dog/broken\\xff.jpg", "empty file"] in record["summary"]["rejected"]
    forced = split_dataset(source, out, jobs=2, force=True, progress=False)  # finds every file it wrote
    assert not forced.unchanged and read_rows(out / "manifest.csv") == rows


@pytest.mark.parametrize("ratios", [(0.63, 0.07, 0.30), (0.5, 0.25, 0.25), (0.98, 0.01, 0.01), (1.0, 0.0, 0.0),
                                    (0.7, 0.0, 0.3), (0.34, 0.33, 0.33)])
def test_allocate_keeps_each_split_within_one_of_its_ratio(ratios):
    for total in range(300):
        counts = allocate(total, ratios)
        assert sum(counts) == total
        assert all(abs(count - total * ratio) < 1 for count, ratio in zip(counts, ratios))
        assert all(count == 0 for count, ratio in zip(counts, ratios) if ratio == 0)


def test_each_class_is_split_on_its_own(tmp_path):
    source = make_classes(tmp_path / "src", {"Bird": 11, "Cat": 50, "Dog": 23})
    summary = split_dataset(source, tmp_path / "out", ratios=(0.6, 0.2, 0.2), jobs=2, progress=False)
    sizes = {"Bird": 11, "Cat": 50, "Dog": 23}
    for split, ratio in zip(SPLITS, (0.6, 0.2, 0.2)):
        for name, size in sizes.items():
            assert abs(summary.counts[split][name] - size * ratio) < 1
            assert summary.counts[split][name] >= 1  # every split has every class
    splits_of = {}
    for row in read_rows(tmp_path / "out" / "manifest.csv"):
        assert row["path"] not in splits_of
        splits_of[row["path"]] = row["split"]
    assert len(splits_of) == sum(sizes.values())


def test_kaggle_flat_layout_gives_the_same_split_as_class_folders(tmp_path):
    flat, folders = tmp_path / "flat", tmp_path / "folders"
    for i in range(15):
        for label, offset in (("cat", 0), ("dog", 500)):
            write_photo(flat / f"{label}.{i}.jpg", seed=offset + i)
            write_photo(folders / label.capitalize() / f"{label}.{i}.jpg", seed=offset + i)
    (flat / "1.jpg").write_bytes((flat / "cat.0.jpg").read_bytes())  # no label: skipped
    one = split_dataset(flat, tmp_path / "a", jobs=2, progress=False)
    two = split_dataset(folders, tmp_path / "b", jobs=2, progress=False)
    assert (one.layout, two.layout) == ("kaggle", "folders")
    assert one.classes == two.classes == ["Cat", "Dog"] and one.counts == two.counts
    assert one.skipped == [("1.jpg", "no class label in the file name")]
    files = [sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) for out in (tmp_path / "a", tmp_path / "b")]
    assert files[0] == files[1] and len(files[0]) == 30
    parts = tmp_path / "parts"  # a practitioner's labels, with _ and a digit; capitalised like cat -> Cat
    for i in range(6):
        write_photo(parts / f"ok_part.{i}.jpg", seed=700 + i)
        write_photo(parts / f"defect2.{i}.png", seed=800 + i, fmt="PNG")
    assert split_dataset(parts, tmp_path / "c", ratios=(0.5, 0.17, 0.33), progress=False).classes == [
        "Defect2", "Ok_part"]


def test_kaggle_train_sample_is_detected(tmp_path):
    sample = SHARED_DATA / "kaggle-train-sample"
    if not sample.is_dir():
        pytest.skip(f"{sample} is not there")
    summary = split_dataset(sample, tmp_path / "out", jobs=2, progress=False)
    assert summary.layout == "kaggle" and summary.classes == ["Cat", "Dog"]
    rows = read_rows(tmp_path / "out" / "manifest.csv")
    assert all(row["path"].startswith(row["class"].lower() + ".") for row in rows)
    assert summary.kept + summary.duplicates_removed + summary.conflicts + len(summary.rejected) == 400
    for name in ("Cat", "Dog"):
        total = sum(summary.counts[split][name] for split in SPLITS)
        assert all(abs(summary.counts[s][name] - total * r) < 1 for s, r in zip(SPLITS, (0.63, 0.07, 0.30)))


def test_a_parent_of_kaggle_train_is_refused(tmp_path):
    for i in range(3):
        write_photo(tmp_path / "kaggle" / "train" / f"cat.{i}.jpg", seed=i)
        write_photo(tmp_path / "kaggle" / "train" / f"dog.{i}.jpg", seed=10 + i)
        write_photo(tmp_path / "kaggle" / "test1" / f"{i}.jpg", seed=20 + i)
    with pytest.raises(UsageError, match=r"train' holds Kaggle-style names .*pass that folder as the source"):
        split_dataset(tmp_path / "kaggle", tmp_path / "out", progress=False)


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    source = make_classes(tmp_path / "src", {"Cat": 30, "Dog": 30})
    split_dataset(source, tmp_path / "a", jobs=1, progress=False)
    split_dataset(source, tmp_path / "b", jobs=2, progress=False)
    split_dataset(source, tmp_path / "c", seed=43, jobs=2, progress=False)
    manifest = [(tmp_path / name / "manifest.csv").read_bytes() for name in "abc"]
    assert manifest[0] == manifest[1]
    assert (tmp_path / "a" / "rejected.csv").read_bytes() == (tmp_path / "b" / "rejected.csv").read_bytes()
    assert manifest[2] != manifest[0]
    other = {row["path"]: row["split"] for row in read_rows(tmp_path / "c" / "manifest.csv")}
    first = {row["path"]: row["split"] for row in read_rows(tmp_path / "a" / "manifest.csv")}
    assert other.keys() == first.keys() and other != first


def test_its_decoding_pool_has_as_many_processes_as_cpus_it_may_run_on(tmp_path, monkeypatch):
    from catsdogs.data import integrity

    source = make_classes(tmp_path / "src", {"Cat": 3, "Dog": 3})
    # A machine of 64 cores of which this process may use 2 (taskset, a container's or a batch job's CPU set).
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5}, raising=False)
    pools: list[int] = []
    check = integrity.check_images
    monkeypatch.setattr(integrity, "check_images", lambda paths, jobs, progress: pools.append(jobs) or
                        check(paths, 1, progress))
    split_dataset(source, tmp_path / "data", progress=False)
    assert pools == [2]


def test_the_report_tells_train_where_the_split_is(tmp_path, monkeypatch):
    source = make_classes(tmp_path / "src", {"Cat": 4, "Dog": 4})
    monkeypatch.chdir(tmp_path)
    assert split_dataset(source, progress=False).format().endswith("Next: catsdogs train --optim adam")
    other = split_dataset(source, "my split", progress=False).format()
    assert other.endswith("Next: catsdogs train --optim adam --data 'my split'")
    assert other.startswith("Split 8 photos of 2 classes from src (folders layout) into my split (hard links).")


def test_user_errors_say_what_is_wrong(tmp_path):
    source = make_classes(tmp_path / "src", {"Cat": 3, "Dog": 3})
    cases = [
        (dict(source=tmp_path / "missing"), r"source folder .*missing' does not exist"),
        (dict(source=source / "Cat" / "cat.0.jpg"), r"is a file, not a folder"),
        (dict(out=source / "data"), r"--out .* is inside the source"),
        (dict(source=source / "Cat", out=source), r"the source .* is inside --out"),
        (dict(source=tmp_path / "src" / "Cat"), r"no images found|only one class"),
        (dict(ratios=(0.5, 0.5, 0.5)), r"adds up to 1.5"),
        (dict(layout="zip"), r"--layout 'zip' is not one of: auto, folders, kaggle"),
        (dict(mode="move"), r"--mode 'move' is not one of: link, copy, symlink"),
        (dict(jobs=0), r"--jobs 0 must be 1 or more"),
    ]
    for overrides, message in cases:
        arguments = {"source": source, "out": tmp_path / "out", "progress": False, **overrides}
        with pytest.raises(CatsdogsError, match=message):
            split_dataset(**arguments)
    split_dataset(source, tmp_path / "made", progress=False)
    for record in ("split.json", "manifest.csv", None):  # without its records, its three folders tell it
        with pytest.raises(CatsdogsError, match=r"made' is a split folder \(its folders are train, val, test\), "
                                                r"whose splits would become classes: pass the photos it was split "):
            split_dataset(tmp_path / "made", tmp_path / "again", progress=False)
        if record:
            (tmp_path / "made" / record).unlink()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatsdogsError, match=r"no images found in .*empty'"):
        split_dataset(tmp_path / "empty", tmp_path / "out", progress=False)
    linked = tmp_path / "linked"  # a dataset made of links to photos kept elsewhere
    for name, count in {"defect": 3, "ok": 2}.items():
        (linked / name).mkdir(parents=True)
        for index, photo in enumerate(sorted((make_classes(tmp_path / "elsewhere", {name: count}) / name).iterdir())):
            (linked / name / f"{index}.jpg").symlink_to(photo)
    with pytest.raises(CatsdogsError, match=r"no usable photos in .*linked' \(link points outside the source: 5\): "
                                            r"split reads only files inside the source.*pass the folder the links"):
        split_dataset(linked, tmp_path / "out", progress=False)
    only_cats = make_classes(tmp_path / "cats", {"Cat": 3})
    with pytest.raises(CatsdogsError, match=r"only one class \('Cat'\) has usable photos"):
        split_dataset(only_cats, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [
    ("0.5,0.5", r"has 2 numbers; give three"),
    ("a,b,c", r"'a,b,c' is not a list of numbers"),
    ("0.6,0.3,0.3", r"adds up to 1.2"),
    ("0,0.5,0.5", r"train, val and test must each be above 0"),
    ("1.2,-0.1,-0.1", r"train, val and test must each be above 0"),
    ("nan,0.5,0.5", r"train, val and test must each be above 0"),
    ("1,0,0", r"^--ratios '1,0,0': train, val and test must each be above 0 \(train validates every epoch; evaluate "
              r"measures on test; to measure on photos elsewhere use `catsdogs evaluate RUN --data FOLDER`\)$"),
    ("0.9,0.1,0", r"'0.9,0.1,0': train, val and test must each be above 0"),
])
def test_parse_ratios_names_the_bad_value(text, message):
    with pytest.raises(UsageError, match=message):
        parse_ratios(text)


@pytest.mark.parametrize("sizes, ratios, message", [
    ({"Cat": 2, "Dog": 30}, (0.63, 0.07, 0.30), r"gives no photo of Cat \(2 usable\) to val: each class needs"),
    ({"Cat": 1, "Dog": 30}, (0.63, 0.07, 0.30), r"gives no photo of Cat \(1 usable\) to val or test: "),
    ({"Cat": 30, "Dog": 30}, (0.98, 0.01, 0.01), r"^--ratios 0.98,0.01,0.01 gives no photo of Cat \(30 usable\) to "
                                                 r"test, of Dog \(30 usable\) to test: .*raise the smaller fractions$"),
])
def test_a_class_too_small_for_the_ratios_is_refused(tmp_path, sizes, ratios, message):
    source = make_classes(tmp_path / "src", sizes)
    with pytest.raises(UsageError, match=message):
        split_dataset(source, tmp_path / "out", ratios=ratios, jobs=1, progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["src"]


def test_parse_ratios_accepts_the_tutorial_split():
    assert parse_ratios("0.63,0.07,0.30") == (0.63, 0.07, 0.30)
    assert parse_ratios(" 0.8, 0.1 ,0.1") == (0.8, 0.1, 0.1)
