"""Generated documentation: the CLI, configuration and HTTP references and the results pages, written into the
docs folder before MkDocs builds it (`make docs`), and the README's headline table, all read from the code and
from benchmarks/results so they never drift. ``python -m genrec.docs_gen --help``."""

from __future__ import annotations

import shutil
from pathlib import Path

from genrec.errors import GenrecError


def write_references(docs: Path, http: bool = True) -> list[Path]:
    """docs/reference/{cli,configuration,http-api}.md (http: build the app, which trains a tiny model)."""
    from genrec.docs_gen import api_ref, cli_ref, config_ref

    makers = {"cli.md": cli_ref.cli_reference, "configuration.md": config_ref.config_reference,
              "http-api.md": api_ref.http_reference}
    out = []
    for name, make in makers.items():
        if name == "http-api.md" and not http:
            continue
        path = docs / "reference" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(make(), encoding="utf-8")
        out.append(path)
    return out


def write_results(root: Path, docs: Path) -> list[Path]:
    """docs/results/*.md from benchmarks/results/*.json, with the plots they show copied into docs/results/img."""
    from genrec.docs_gen.results import PAGES, index_page
    from genrec.docs_gen.results_common import Results

    res = Results(root)
    folder = docs / "results"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "img").mkdir(parents=True)
    out = []
    for name, (_, make) in PAGES.items():
        out.append(folder / name)
        out[-1].write_text(make(res), encoding="utf-8")
    out.append(folder / "index.md")
    out[-1].write_text(index_page(res), encoding="utf-8")
    for image in sorted(set(res.images)):
        shutil.copy2(res.folder / image, folder / "img" / image)
    return out


def readme_with_results(root: Path, text: str) -> str:
    """``text`` (the README) with its headline block regenerated from the results."""
    from genrec.docs_gen.results import README_BEGIN, README_END, readme_block
    from genrec.docs_gen.results_common import Results

    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise GenrecError(f"README.md has no {README_BEGIN} ... {README_END} block for the headline results")
    return text[:start] + readme_block(Results(root)) + text[end + len(README_END):]


def build(root: Path, docs: Path | None = None, readme: bool = True, http: bool = True) -> list[Path]:
    """Every generated page under ``docs`` (default root/docs), and the README's block when ``readme``."""
    root = Path(root)
    docs = Path(docs) if docs else root / "docs"
    out = write_references(docs, http=http) + write_results(root, docs)
    if readme:
        path = root / "README.md"
        text = path.read_text(encoding="utf-8")
        fresh = readme_with_results(root, text)
        if fresh != text:
            path.write_text(fresh, encoding="utf-8")
        out.append(path)
    return out
