"""Exceptions that carry a message meant for the user; the CLI prints them as one line."""


class CatsdogsError(Exception):
    """A problem with the user's input or files; its message says what is wrong and what to do."""


class UsageError(CatsdogsError):
    """A bad option value or combination (the CLI exits with code 2)."""
