"""The command line: parse and validate options, call one library function, report in a line.

`main` (group.py) is the `catsdogs` command; importing this package registers its commands, kept in one
module for each stage they serve.
"""

from catsdogs.cli import data_commands, model_commands, train_commands  # noqa: F401  (they register on main)
from catsdogs.cli.group import main

__all__ = ["main"]
