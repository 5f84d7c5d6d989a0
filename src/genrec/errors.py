"""Errors that speak to a person: each names the file, row or field and what was expected."""

from __future__ import annotations


class GenrecError(Exception):
    """Base class of every error genrec raises on bad input; the CLI prints it and exits with status 2."""


class DataError(GenrecError):
    """A data file or table is missing, malformed or empty."""

    def __init__(self, message: str, *, path: object = None, line: int | None = None, column: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")
        self.path, self.line, self.column = path, line, column


class ConfigError(GenrecError):
    """A configuration file, flag or value is invalid."""


class UnknownDatasetError(GenrecError):
    """A dataset name is neither built in nor an existing path."""
