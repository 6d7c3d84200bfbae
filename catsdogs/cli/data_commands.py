"""The commands that fetch, split and show photos: download, split, show."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from catsdogs.cli.group import ChoiceOf, main, n_photos


@main.command()
@click.option("--dest", default=".", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder that will hold PetImages/ and the downloaded zip.")
def download(dest: Path) -> None:
    """Download Microsoft's Kaggle Cats and Dogs photos (787 MB) and extract them to DEST/PetImages."""
    from catsdogs.data.download import download_petimages

    result = download_petimages(dest)
    if not result.extracted:
        click.echo(f"{result.path} already holds the photos; nothing to do.")
    else:
        click.echo(f"Extracted to {result.path}; archive kept at {result.archive} (delete it to free 787 MB).")
    click.echo(f"Next: catsdogs split {shlex.quote(str(result.path))}")


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", default="data", show_default=True, type=click.Path(path_type=Path),
              help="Folder to write train/, val/ and test/ into.")
@click.option("--ratios", default="0.63,0.07,0.30", show_default=True,
              help="Fractions for train,val,test (the tutorial's 30% test, 7% validation).")
@click.option("--seed", default=42, show_default=True, type=int, help="Seed of the shuffle.")
@click.option("--layout", default="auto", show_default=True, type=ChoiceOf("catsdogs.data.split", "LAYOUTS"),
              help="folders: one subfolder per class (PetImages); kaggle: flat cat.N.jpg/dog.N.jpg.")
@click.option("--mode", default="link", show_default=True, type=ChoiceOf("catsdogs.data.split", "MODES"),
              help="How files land in the split: hard links (copies across filesystems), copies or symlinks.")
@click.option("--jobs", default=None, type=click.IntRange(min=1), help="Processes decoding images [the CPUs this process may run on].")
@click.option("--force", is_flag=True, help="Replace an output folder that split made with other arguments (never a "
                                          "folder split did not make).")
def split(source: Path, out: Path, ratios: str, seed: int, layout: str, mode: str, jobs: int | None,
          force: bool) -> None:
    """Check every image in SOURCE and split it into train/val/test folders."""
    from catsdogs.data.split import parse_ratios, split_dataset

    summary = split_dataset(source, out, parse_ratios(ratios), seed=seed, layout=layout, mode=mode, jobs=jobs,
                            force=force)
    click.echo(summary.format())




@main.command()
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--split", "split_name", default="train", show_default=True,
              type=ChoiceOf("catsdogs.data.split", "SPLITS"),
              help="Which split of a split folder (a plain folder of class folders has none).")
@click.option("--n", "count", default=32, show_default=True, type=int, help="Photos in the grid.")
@click.option("--augment", default=None, is_flag=False, flag_value="", metavar="[RUN_DIR]",
              help="Show the first training images as the model gets them (resized, augmented), under the "
                   "default settings or those of RUN_DIR (and from its data unless DATA is given).")
@click.option("--seed", default=None, type=int, help="Seed of the draw. [default: 42, or the run's with --augment]")
@click.option("--out", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Figure file (.png, .svg or .pdf). [default: show-<split>.png, show-train-augmented.png]")
def show(data: Path | None, split_name: str, count: int, augment: str | None, seed: int | None,
         out: Path | None) -> None:
    """Draw a grid of random photos of a split (default: data, train), each titled with its class.

    DATA is a split folder or a folder of class folders. With --augment the grid shows what
    training feeds the model, through the same code and random seeds as `catsdogs train`.
    """
    from catsdogs.inference.show import show as draw

    grid, written = draw(data, split_name, count, augment, seed, out)
    if grid.unreadable:
        click.echo(f"passed over {n_photos(len(grid.unreadable))} that could not be read: "
                   f"{', '.join(str(p) for p in grid.unreadable[:3])}" + (" ..." if len(grid.unreadable) > 3 else ""),
                   err=True)
    click.echo(f"wrote {written} ({n_photos(len(grid.pixels))})")
