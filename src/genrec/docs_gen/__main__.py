"""python -m genrec.docs_gen [--root .] [--docs DIR] [--no-readme] [--check-readme]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genrec.docs_gen import build, readme_with_results


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m genrec.docs_gen", description=__doc__)
    ap.add_argument("--root", type=Path, default=Path("."), help="Repository root (benchmarks/results, README.md).")
    ap.add_argument("--docs", type=Path, help="Docs folder to write the generated pages into (default ROOT/docs).")
    ap.add_argument("--no-readme", action="store_true", help="Leave README.md as it is.")
    ap.add_argument("--check-readme", action="store_true",
                    help="Only check that README.md's results block is current (exit 1 if not).")
    args = ap.parse_args()
    if args.check_readme:
        text = (args.root / "README.md").read_text(encoding="utf-8")
        if readme_with_results(args.root, text) != text:
            sys.exit("README.md's results block is stale: run `make docs`")
        return
    for path in build(args.root, args.docs, readme=not args.no_readme):
        print(path)


if __name__ == "__main__":
    main()
