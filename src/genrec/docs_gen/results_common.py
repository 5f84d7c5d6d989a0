"""Reading the committed benchmark results (benchmarks/results/*.json) for the generated results pages."""

from __future__ import annotations

import ast
import json
import statistics
from functools import cache
from pathlib import Path
from typing import Any

RESULTS = Path("benchmarks/results")


class Results:
    """The results folder of a checkout: JSON files by stem, plots, and the published figures the quality
    benchmark compares against (benchmarks/quality.py PUBLISHED, read without running the script)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.folder = self.root / RESULTS
        self.images: list[str] = []  # plots the pages show, copied next to them by the build

    def has(self, stem: str) -> bool:
        return (self.folder / f"{stem}.json").is_file()

    def load(self, stem: str) -> dict[str, Any]:
        return _read(self.folder / f"{stem}.json")

    def stems(self, prefix: str = "") -> list[str]:
        return sorted(p.stem for p in self.folder.glob(f"{prefix}*.json"))

    def image(self, name: str, alt: str) -> str:
        """Markdown showing a plot of the results folder (copied into the site under img/)."""
        if not (self.folder / name).is_file():
            return ""
        self.images.append(name)
        return f"![{alt}](img/{name})"

    def published(self) -> dict[str, dict[str, dict[str, float]]]:
        """The published reference figures per dataset and source, as benchmarks/quality.py states them."""
        tree = ast.parse((self.root / "benchmarks" / "quality.py").read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PUBLISHED" for t in node.targets):
                return ast.literal_eval(node.value)
        return {}


@cache
def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def provenance(data: dict[str, Any], stem: str) -> str:
    """One line naming the file, its commit, date and machine."""
    commit = data.get("commit") or data.get("checkout", {}).get("commit", "")
    machine = data.get("machine", {})
    cpus = machine.get("cpus") or machine.get("cores")
    parts = [f"`benchmarks/results/{stem}.json`"]
    if commit:
        parts.append(f"commit `{str(commit)[:7]}`")
    if data.get("created"):
        parts.append(str(data["created"])[:10])
    if cpus:
        parts.append(f"{cpus} CPUs, torch {machine.get('torch', '?')}")
    return "Source: " + ", ".join(parts) + "."


def mean(values: list[float]) -> float:
    return statistics.fmean(values)
