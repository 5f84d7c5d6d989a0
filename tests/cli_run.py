"""Run the ``genrec`` command in-process, as a user would: exit status, stdout, stderr.

Importable from every test module (pytest puts tests/, the folder of the root conftest.py, on sys.path).
"""

from __future__ import annotations

import sys

from genrec.cli import main


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    old = sys.argv
    sys.argv = ["genrec", *argv]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err
