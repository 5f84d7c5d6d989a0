"""A bundle is an immutable, versioned folder that holds everything needed to serve a trained model:

- ``model.safetensors``: weights (never pickle);
- ``model.json``: model name, typed config, catalog size, whether it reads timestamps;
- ``items.parquet``: dense id -> raw id, display fields (title, ...) and training popularity;
- ``manifest.json``: genrec version, model, dataset, test metrics, commit, and the sha256 of every file.

Loading verifies every checksum before anything is read.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

from genrec import __version__
from genrec.errors import GenrecError
from genrec.io import read_json, sha256_file, write_json

FORMAT = "genrec-bundle"
FORMAT_VERSION = 1
RUN_FILES = ("model.safetensors", "model.json", "items.parquet")


def export_bundle(run_dir: str | Path, out: str | Path) -> Path:
    """Copy a finished training run's servable files into ``out`` and seal them with a manifest.

    ``out`` must not exist yet (bundles are immutable); the bundle is assembled in a temporary folder and
    renamed into place, so a failure never leaves half a bundle.
    """
    run_dir, out = Path(run_dir), Path(out)
    missing = [f for f in RUN_FILES + ("metrics.json",) if not (run_dir / f).is_file()]
    if missing:
        raise GenrecError(f"{run_dir}: not a finished training run (missing {', '.join(missing)})")
    if out.exists():
        raise GenrecError(f"{out}: already exists; bundles are immutable, choose a new folder")
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for name in RUN_FILES:
            shutil.copy2(run_dir / name, tmp / name)
        metrics = read_json(run_dir / "metrics.json")
        model = read_json(run_dir / "model.json")
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "genrec": __version__,
            "version": dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"),
            "model": model["name"], "dataset": metrics["dataset"]["name"],
            "metrics": {k: v["mean"] for k, v in metrics["metrics"].items()},
            "commit": metrics.get("run", {}).get("commit"), "source_run": str(run_dir),
            "files": {name: sha256_file(tmp / name) for name in RUN_FILES},
        }
        write_json(tmp / "manifest.json", manifest)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_manifest(bundle: str | Path, verify: bool = True) -> dict[str, Any]:
    bundle = Path(bundle)
    path = bundle / "manifest.json"
    if not path.is_file():
        raise GenrecError(f"{bundle}: not a genrec bundle (no manifest.json)")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise GenrecError(f"{bundle}: unsupported bundle format {manifest.get('format')} "
                          f"v{manifest.get('format_version')}")
    if verify:
        for name, digest in manifest["files"].items():
            if not (bundle / name).is_file():
                raise GenrecError(f"{bundle}: missing {name}")
            if sha256_file(bundle / name) != digest:
                raise GenrecError(f"{bundle}: {name} does not match its checksum; the bundle is corrupted")
    return manifest
