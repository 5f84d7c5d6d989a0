"""The CLI reference: every command and subcommand of the typer app, every argument and option with its type,
default and help, read from the app itself so the page cannot drift from `genrec --help`."""

from __future__ import annotations

import re
from typing import Any

from genrec.docs_gen.md import page, table, text

_META = re.compile(r"\s+\[([^\[\]]*)\]$")  # click's trailing "[default: x; 1<=x<=9]" of a help record


def _context(command: Any, name: str, parent: Any = None) -> Any:
    from typer._click.core import Context  # typer ships its own click

    return Context(command, info_name=name, parent=parent)


def _walk(command: Any, ctx: Any, path: list[str]) -> list[tuple[list[str], Any, Any]]:
    """(command path, command, context) for the app and every subcommand, depth first in `--help` order."""
    out = [(path, command, ctx)]
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                out += _walk(sub, _context(sub, name, ctx), [*path, name])
    return out


def _param_row(param: Any, ctx: Any) -> list[str] | None:
    record = param.get_help_record(ctx)
    if record is None or param.hidden:
        return None
    names = " / ".join(f"`{o}`" for o in (*param.opts, *param.secondary_opts))
    if param.param_type_name == "argument":
        names = f"`{param.name.upper()}`" + ("..." if param.nargs == -1 else "")
    help_text, meta = record[1], ""
    if m := _META.search(help_text):
        help_text, meta = help_text[: m.start()], m.group(1)
    parts = [p.split(": ", 1) if ": " in p else ("", p) for p in meta.split("; ") if p]
    default = "required" if param.required else dict(parts).get("default", "")
    extra = [v for k, v in parts if k == "" and v != "required"] + ([f"env {param.envvar}"] if param.envvar else [])
    kind = param.display_type(ctx).strip("<>")
    kind = "flag" if param.secondary_opts or kind == "bool" else kind
    if extra:
        kind += " (" + ", ".join(extra) + ")"
    return [names, f"`{kind}`", f"`{default}`" if default else "", help_text.strip()]


def _usage(command: Any, ctx: Any) -> str:
    return command.get_usage(ctx).removeprefix("Usage: ").strip()


def cli_reference() -> str:
    """Markdown for every command of `genrec`."""
    import typer

    from genrec.cli import app

    root = typer.main.get_command(app)
    blocks = ["Every command, argument and option of `genrec`, generated from the command-line app. "
              "`genrec COMMAND --help` prints the same. Errors in the input end with one line naming what is "
              "wrong and exit status 2."]
    summary = []
    for path, command, ctx in _walk(root, _context(root, "genrec"), ["genrec"]):
        name = " ".join(path)
        doc = text((command.help or "").strip())
        if len(path) > 1:
            summary.append([f"[`{name}`](#{'-'.join(path)})", doc.split("\n\n")[0].replace("\n", " ")])
        rows = [r for p in command.params if (r := _param_row(p, ctx)) is not None]
        blocks.append(f"## {name} {{#{'-'.join(path)}}}\n\n{doc}\n\n```\n{_usage(command, ctx)}\n```\n\n"
                      + table(["argument / option", "type", "default", "description"], rows))
    blocks.insert(1, table(["command", "what it does"], summary))
    return page("CLI reference", *blocks)
