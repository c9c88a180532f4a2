"""Errors that end a command with one clear line instead of a traceback."""


class Fatal(Exception):
    """Says what went wrong and which setting changes it."""
