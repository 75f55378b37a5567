"""Errors that the CLI turns into one clear line and an exit code instead of a traceback."""
from __future__ import annotations


class ScmgenError(Exception):
    """A failure the user can act on. `exit_code` 2 = bad input, 1 = runtime failure."""

    exit_code = 1


class SpecError(ScmgenError):
    """Bad input: names the file, the field path inside it and what was expected."""

    exit_code = 2

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source, self.field, self.message = source, field, message
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        """Rebuilt from its three parts: a parallel lane's error must reach the parent process intact."""
        return type(self), (self.source, self.field, self.message)


class UsageError(ScmgenError):
    """Bad command-line input that is not about a file (conflicting flags, unknown values)."""

    exit_code = 2
