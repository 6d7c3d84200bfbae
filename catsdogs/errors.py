"""Exceptions that carry a message meant for the user; the CLI prints them as one line."""


class CatsdogsError(Exception):
    """A problem with the user's input or files; its message says what is wrong and what to do."""


class UsageError(CatsdogsError):
    """A bad option value or combination (the CLI exits with code 2)."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when empty), for a one-line report."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    if len(line) <= limit:
        return line
    cut = line[:limit - 4]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut) + " ..."  # whole words, and say it goes on
