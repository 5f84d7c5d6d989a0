"""The ``genrec`` typer app, its ``data`` sub-app and the consoles every command module prints with."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="genrec: generative recommendation, end to end.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: list, inspect, download, prepare.")
app.add_typer(data_app, name="data")
# Rich falls back to 80 columns when output is not a terminal; tables of metrics need more.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
