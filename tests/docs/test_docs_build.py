"""The docs site: generated pages written from the code and benchmarks/results, then `mkdocs build --strict`
(broken links, missing pages and unknown anchors fail), and the README's results block kept current."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genrec.docs_gen import build, readme_with_results
from genrec.docs_gen.config_ref import missing_descriptions
from genrec.docs_gen.md import num, text

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("results", "cli.md", "configuration.md", "http-api.md")  # left out of the copy: the build writes them


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d",
                           str(site)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The docs copied to a temporary folder, the generated pages written into it, the site built strictly."""
    pytest.importorskip("material", reason="the docs extra (mkdocs-material) is not installed")
    root = tmp_path_factory.mktemp("docs-site")
    shutil.copy2(ROOT / "mkdocs.yml", root / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", root / "docs", ignore=shutil.ignore_patterns(*GENERATED))
    build(ROOT, root / "docs", readme=False)
    done = _mkdocs(root / "mkdocs.yml", root / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def _page(site: Path, name: str) -> str:
    return (site / "site" / name / "index.html").read_text(encoding="utf-8")


def test_site_has_every_generated_page(site):
    cli = _page(site, "reference/cli")
    assert "genrec data prepare" in cli and "--memory-limit" in cli and "--ranker-weight" in cli
    config = _page(site, "reference/configuration")
    assert "schedule_by" in config and "refit_epochs" in config and "combine" in config
    api = _page(site, "reference/http-api")
    assert "/v1/recommend" in api and "/admin/reload" in api and "RecommendRequest" in api
    retrieval = _page(site, "results/retrieval")
    assert (site / "site" / "results" / "img" / "ml1m_curves.png").is_file()
    quality = json.loads((ROOT / "benchmarks/results/quality.json").read_text(encoding="utf-8"))
    hr10 = quality["datasets"]["movielens-1m"]["hstu"]["mean"]["hr@10"]
    assert num(hr10) in retrieval  # figures are read from the results file, not typed


def test_strict_build_fails_on_a_broken_link(site, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(site, broken, ignore=shutil.ignore_patterns("site"))
    page = broken / "docs" / "getting-started.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [a page that does not exist](nowhere.md).\n",
                    encoding="utf-8")
    done = _mkdocs(broken / "mkdocs.yml", broken / "site")
    assert done.returncode != 0 and "nowhere.md" in done.stderr, done.stderr[-2000:]


def test_readme_results_block_is_current():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_with_results(ROOT, readme) == readme, "README.md's results block is stale: run `make docs`"
    assert len(readme.splitlines()) <= 250


def test_every_config_field_has_a_description():
    assert missing_descriptions() == []


def test_markdown_helpers():
    assert num(0.30341) == ".3034" and num(-0.0123) == "-.0123" and num(1.5) == "1.5000"
    assert text("runs/<stem> and `<kept>`") == "runs/&lt;stem&gt; and `<kept>`"


def _shell_commands(markdown: str) -> list[str]:
    """Every `genrec ...` command of the fenced code blocks (continuation lines joined, comments dropped)."""
    commands, block, joined = [], False, ""
    for line in markdown.splitlines():
        if line.startswith("```"):
            block = not block
            continue
        if not block:
            continue
        joined += line.split(" #")[0].rstrip()
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        words = joined.split()
        if "genrec" in words and words[0] in ("genrec", "torchrun"):
            commands.append(" ".join(words[words.index("genrec"):]))
        joined = ""
    return commands


def _options(command: str) -> tuple[str, set[str]]:
    """The command path of a `genrec ...` line and the options that command accepts."""
    import typer
    from typer._click.core import Context

    from genrec.cli import app

    node, path = typer.main.get_command(app), ["genrec"]
    ctx = Context(node, info_name="genrec")
    for word in command.split()[1:]:
        sub = node.get_command(ctx, word) if hasattr(node, "get_command") else None
        if sub is None:
            break
        node, path, ctx = sub, [*path, word], Context(sub, info_name=word, parent=ctx)
    return " ".join(path), {o for p in node.params for o in (*p.opts, *p.secondary_opts)}


def test_documented_commands_and_configs_exist():
    written = sorted((ROOT / "docs").rglob("*.md"))
    pages = [ROOT / "README.md", *(p for p in written if not set(p.relative_to(ROOT).parts) & set(GENERATED))]
    seen = 0
    for page in pages:
        markdown = page.read_text(encoding="utf-8")
        for command in _shell_commands(markdown):
            path, accepted = _options(command)
            assert path != "genrec" or command.split()[1:2] == [], f"{page.name}: unknown command in {command!r}"
            used = {w.strip("[]").split("=")[0] for w in command.split() if w.strip("[]").startswith("--")}
            assert used <= accepted | {"--help"}, f"{page.name}: {command!r}: {sorted(used - accepted)}"
            seen += 1
        for config in {w.strip("`'\"(),:") for w in markdown.split() if w.strip("`'\"(),:").startswith("configs/")}:
            if config.endswith(".yaml") and "{" not in config and "*" not in config:
                assert (ROOT / config).is_file(), f"{page.name} names {config}, which does not exist"
    assert seen > 20
