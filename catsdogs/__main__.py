"""`python -m catsdogs` runs the command line."""

from catsdogs.cli import main

main(prog_name="catsdogs")
