"""A bundle is an immutable, versioned folder that holds everything needed to serve a trained model:

- ``model.safetensors``: weights (never pickle);
- ``model.json``: model name, typed config, catalog size, whether it reads timestamps;
- ``items.parquet``: dense id -> raw id, display fields (title, ...) and training popularity;
- ``catalog.arrow`` + ``catalog_index.arrow``: the same items as memory-mappable Arrow with a raw id lookup, so
  a catalog of millions of items loads without a Python object per item (see :mod:`genrec.serve.catalog`);
- ``popularity.json``: the most popular raw ids by training count (the cold-start / fallback list);
- ``semantic_ids.safetensors`` + ``semantic_ids.json``: the semantic-ID table, when the model has one;
- ``embeddings.safetensors`` + ``embeddings.json`` (+ ``projection.safetensors`` when the table was projected
  with pca): the catalog's content embeddings, optional (``content=``), so a text query can steer results;
- ``ann.faiss``: a FAISS index over the output item embeddings, for large catalogs (``ann=``, see
  :mod:`genrec.serve.ann`: IVF-flat or IVF-PQ), with its kind, search parameters and measured recall against
  exact search under ``ann`` in the manifest; ``item_table.npy`` with it when the model computes its item table
  (content or semantic-ID features, L2 normalisation), so that workers memory-map the table instead of each
  computing a private copy;
- ``ranker.safetensors``, ``ranker.json``, ``ranker_items.parquet``, ``ranker_users.parquet``: a multi-task ranking
  model as the second stage (``ranker=``), see :mod:`genrec.serve.ranking`;
- ``generator.safetensors`` + ``generator.json``: a semantic-ID generator (tiger, hstu-gen) next to an ID model
  (``generator=``), so a request can choose either retriever (``retriever="generator"``); a generator trained with
  ``model.query`` then decodes conditioned on the request's query;
- ``manifest.json``: genrec version, model, dataset, test metrics, commit, and the sha256 of every file.

Loading verifies every checksum before anything is read. The files after ``items.parquet`` are optional
additions to format version 1: a bundle without them (older exports) still loads.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from genrec import __version__
from genrec.errors import GenrecError
from genrec.io import atomic_write, read_json, read_vocab, sha256_file, write_json, write_vocab
from genrec.serve.catalog import Catalog

FORMAT = "genrec-bundle"
FORMAT_VERSION = 1
RUN_FILES = ("model.safetensors", "model.json", "items.parquet")
POPULARITY_FILE = "popularity.json"
POPULARITY_TOP = 1000
SEMANTIC_ID_FILES = ("semantic_ids.safetensors", "semantic_ids.json")
CONTENT_FILES = ("embeddings.safetensors", "embeddings.json")
PROJECTION_FILE = "projection.safetensors"  # only with a pca-projected content table
ANN_FILE = "ann.faiss"  # only with an approximate index (large catalogs)
ITEM_TABLE_FILE = "item_table.npy"  # with an index, when the model's item table is computed, not stored
RANKER_FILES = ("ranker.safetensors", "ranker.json", "ranker_items.parquet", "ranker_users.parquet")
GENERATOR_FILES = ("generator.safetensors", "generator.json")  # a second retriever next to an ID model


def export_bundle(run_dir: str | Path, out: str | Path, content: str | Path | None = None, ann: Any = "auto",
                  ann_threshold: int = 100_000, ann_recall: float = 0.95, ranker: str | Path | None = None,
                  ranker_options: dict[str, Any] | None = None, ann_memory_mb: float = 1024.0,
                  generator: str | Path | None = None) -> Path:
    """Copy a finished training run's servable files into ``out`` and seal them with a manifest.

    Also written: the popularity list, the semantic-ID table when the model has one, and, with ``content`` (an
    ItemEmbeddings folder, see :mod:`genrec.content.store`), the catalog's content embeddings, which must hold
    exactly the run's items in dense-id order.

    ``ann``: the approximate index of an ID model (``ann.faiss``, see :mod:`genrec.serve.ann`): ``auto`` scores
    catalogs of up to ``ann_threshold`` items exactly and indexes larger ones, IVF-flat while that index fits
    ``ann_memory_mb``, else IVF-PQ; ``flat`` (or ``off``) never builds one, ``ivf`` (or ``on``) and ``ivfpq``
    always do; an :class:`~genrec.serve.ann.AnnConfig` (or its dict) sets every parameter. The search parameters
    are the smallest that reach ``ann_recall`` (recall@10 against exact top-10 on sample queries), reported in
    the manifest.

    ``generator``: a finished semantic-ID generator run (tiger, hstu-gen) over the same items, served next to the
    run's ID model as a second retriever (``generator.*`` files; the manifest's ``generator`` entry).

    ``ranker``: a finished ranking run (``genrec.models.RANKING``) to add as the second stage
    (:mod:`genrec.serve.ranking`); ``ranker_options``: ``weight`` (fusion weight, default 1.0; None = the ranker
    alone), ``blend`` ({task: weight}, default the engagement task's logit), ``candidates`` (default 200) and
    ``time_scale`` (event timestamps x time_scale = the ranker's unix ms; default 1).

    ``out`` must not exist yet (bundles are immutable); the bundle is assembled in a temporary folder and
    renamed into place, so a failure never leaves half a bundle.
    """
    from genrec.models.generators import GENERATORS
    from genrec.serve.ann import AnnConfig

    run_dir, out = Path(run_dir), Path(out)
    ann_config = AnnConfig.of(ann, threshold=ann_threshold, recall=ann_recall, memory_mb=ann_memory_mb)
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
        catalog = Catalog.from_items(pq.read_table(tmp / "items.parquet"))
        files = [*RUN_FILES, POPULARITY_FILE, *catalog.save(tmp)]
        _write_popularity(tmp, catalog)
        files += _write_semantic_ids(run_dir, tmp, model)
        if content is not None:
            files += _copy_content(Path(content), tmp, list(catalog.raw_ids))
        generator_report = None
        if generator is not None:
            generator_report = _copy_generator(Path(generator), tmp, model, list(catalog.raw_ids))
            files += list(GENERATOR_FILES)
        ranker_report = None
        if ranker is not None:
            ranker_report = _copy_ranker(Path(ranker), tmp, list(catalog.raw_ids), ranker_options or {})
            files += list(RANKER_FILES)
        ann_report = None
        if model["name"] not in GENERATORS or ann_config.kind not in ("auto", "flat"):
            ann_report, ann_files = _write_ann(tmp, catalog, ann_config)
            files += ann_files
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "genrec": __version__,
            "version": dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"),
            "model": model["name"], "dataset": metrics["dataset"]["name"],
            "metrics": {k: v["mean"] for k, v in metrics["metrics"].items()},
            "commit": metrics.get("run", {}).get("commit"), "source_run": str(run_dir),
            "content": str(content) if content is not None else None, "ann": ann_report, "ranker": ranker_report,
            "generator": generator_report,
            "files": {name: sha256_file(tmp / name) for name in files},
        }
        write_json(tmp / "manifest.json", manifest)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _copy_generator(run: Path, bundle: Path, model: dict[str, Any], raw_ids: list[str]) -> dict[str, Any]:
    """The second retriever's files; returns the manifest's ``generator`` entry."""
    from genrec.models.generators import GENERATORS

    missing = [f for f in ("model.safetensors", "model.json", "items.parquet") if not (run / f).is_file()]
    if missing:
        raise GenrecError(f"generator {run}: not a finished training run (missing {', '.join(missing)})")
    spec = read_json(run / "model.json")
    if spec.get("name") not in GENERATORS:
        raise GenrecError(f"generator {run}: model {spec.get('name')!r} is not the semantic-ID generator "
                          f"({' or '.join(GENERATORS)})")
    if model["name"] in GENERATORS:
        raise GenrecError("generator: the bundle's model is a generator already; a second one needs an ID model "
                          "(sasrec, hstu) as the first")
    items = Catalog.from_items(pq.read_table(run / "items.parquet")).raw_ids
    if list(items) != raw_ids:
        raise GenrecError(f"generator {run}: its {len(items):,} items are not the ID model's {len(raw_ids):,} items "
                          "in dense-id order; train both on the same dataset")
    shutil.copy2(run / "model.safetensors", bundle / GENERATOR_FILES[0])
    shutil.copy2(run / "model.json", bundle / GENERATOR_FILES[1])
    metrics = read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
    return {"model": spec["name"], "source_run": str(run), "query": (spec.get("config") or {}).get("query") is not None,
            "metrics": {k: v["mean"] for k, v in (metrics.get("metrics") or {}).items()}}


def _copy_ranker(run: Path, bundle: Path, raw_ids: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """The ranking stage's files (see :mod:`genrec.serve.ranking`); returns the manifest's ``ranker`` entry."""
    from genrec.data.actions import schema_for
    from genrec.models import RANKING
    from genrec.models.ranking import RankSpec
    from genrec.models.two_stage import resolve_blend
    from genrec.serve.ranking import DEFAULT_CANDIDATES

    missing = [f for f in ("model.safetensors", "model.json", "config.json") if not (run / f).is_file()]
    if missing:
        raise GenrecError(f"ranker {run}: not a finished ranking run (missing {', '.join(missing)})")
    model, config = read_json(run / "model.json"), read_json(run / "config.json")
    if model.get("name") not in RANKING:
        raise GenrecError(f"ranker {run}: model {model.get('name')!r} is not a ranking model ({', '.join(RANKING)})")
    spec = RankSpec.from_json(model["spec"])
    row_values = _row_values(run, model, config, spec)
    if (run / "ranker_items.parquet").is_file() and (run / "ranker_users.parquet").is_file():
        items, users = read_vocab(run / "ranker_items.parquet"), read_vocab(run / "ranker_users.parquet")
    else:  # runs from before the trainer wrote its vocabularies: the impression log it trained on has them
        from genrec.data.impression_readers import load_impressions

        log = load_impressions(str(config["dataset"]))
        items, users = log.items.raw.to_pylist(), log.users.raw.to_pylist()
    if len(items) != spec.n_items or len(users) != spec.n_users:
        raise GenrecError(f"ranker {run}: vocabularies of {len(items)} items / {len(users)} users do not match the "
                          f"model's {spec.n_items} / {spec.n_users}")
    known = len(set(map(str, items)) & set(raw_ids))
    if not known:
        raise GenrecError(f"ranker {run}: none of the retrieval model's {len(raw_ids):,} items is in the ranker's "
                          "catalog (items are matched by raw id)")
    try:
        blend = resolve_blend(spec.tasks, options.get("blend"))
    except GenrecError as e:
        raise GenrecError(f"ranker: {e}") from None
    weight = options.get("weight", 1.0)
    candidates = int(options.get("candidates") or DEFAULT_CANDIDATES)
    time_scale = float(options.get("time_scale") or 1.0)
    if candidates < 1 or time_scale <= 0 or (weight is not None and not np.isfinite(weight)):
        raise GenrecError("ranker: candidates must be >= 1, time_scale > 0 and weight a finite number or None")
    info = {**model, "actions": model.get("actions") or schema_for(str(config["dataset"]), spec.action_sizes or {}),
            "blend": blend, "weight": weight, "candidates": candidates, "time_scale": time_scale,
            "dataset": str(config["dataset"]), "source_run": str(run), "row_values": row_values}
    shutil.copy2(run / "model.safetensors", bundle / "ranker.safetensors")
    write_json(bundle / "ranker.json", info)
    write_vocab(bundle / "ranker_items.parquet", items)
    write_vocab(bundle / "ranker_users.parquet", users)
    return {"model": model["name"], "dataset": info["dataset"], "tasks": list(spec.tasks), "blend": blend,
            "weight": weight, "candidates": candidates, "time_scale": time_scale,
            "context": list((model.get("config") or {}).get("row_context") or []),
            "retrieval_items_known": known, "source_run": str(run)}


def _row_values(run: Path, model: dict[str, Any], config: dict[str, Any], spec: Any) -> dict[str, list[str]]:
    """The raw values of the ranker's row features' codes (what a request's ``context`` is mapped through):
    from model.json, or, for runs from before it stored them, from the impression log the run trained on. A
    ranker that reads a row feature whose values are unknown cannot be served."""
    values = model.get("row_values")
    if values is None and spec.row_feature_sizes:
        from genrec.data.impression_readers import load_impressions

        values = load_impressions(str(config["dataset"])).row_feature_values
    values = values or {}
    for name in (model.get("config") or {}).get("row_context") or []:
        if len(values.get(name, [])) != spec.row_feature_sizes[name] - 1:
            raise GenrecError(f"ranker {run}: it reads the row feature {name!r}, but the raw values of its "
                              f"{spec.row_feature_sizes[name] - 1} codes are unknown, so a request's context "
                              "cannot be mapped to them")
    return values


def _write_ann(bundle: Path, catalog: Catalog, config: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """Choose, build and tune the FAISS index over the model's output item embeddings (none when the catalog is
    scored exactly). The sample queries are the model's states after histories of 20 items drawn by training
    popularity (what users look like). Returns (the manifest's ``ann`` entry or None, the files written)."""
    import torch

    from genrec.data.jagged import Jagged
    from genrec.models import SequentialModel
    from genrec.models.generators import GENERATORS
    from genrec.serve.ann import build_tuned, choose
    from genrec.serve.model_io import load_model

    spec = read_json(bundle / "model.json")
    if spec["name"] not in GENERATORS and choose(config, catalog.n_items, int(spec["config"]["dim"]))[0] == "flat":
        return None, []
    model = load_model(bundle, mmap=True)  # the item table stays in the page cache, not in private memory
    if not isinstance(model, SequentialModel):
        raise GenrecError(f"an approximate index needs an ID model (sasrec, hstu), not {type(model).__name__}")
    p = catalog.train_count.astype(np.float64) + 1.0
    rng = np.random.default_rng(config.seed)
    histories = rng.choice(np.arange(1, catalog.n_items + 1), size=(config.queries, 20), p=p / p.sum())
    with torch.no_grad():
        table = model.item_table().detach().float()
        queries = model.last_hidden(Jagged.from_lists(histories.tolist())).float().numpy()
    stored = any(t.data_ptr() == table.data_ptr() for t in model.state_dict().values())
    index, report = build_tuned(table.numpy()[1:], queries, config)
    if index is None:
        return None, []
    index.save(bundle / ANN_FILE)
    if stored:
        return report, [ANN_FILE]
    atomic_write(bundle / ITEM_TABLE_FILE, lambda tmp: _save_npy(tmp, table.numpy()))
    return report, [ANN_FILE, ITEM_TABLE_FILE]


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a temporary name
        np.save(f, array)


def _write_popularity(bundle: Path, catalog: Catalog) -> None:
    """``popularity.json``: up to POPULARITY_TOP raw ids with a training count, most trained first (ties in
    dense-id order)."""
    top = catalog.by_count[:POPULARITY_TOP]
    top = top[catalog.train_count[top - 1] > 0]
    write_json(bundle / POPULARITY_FILE, {"by": "train_count", "items": [catalog.raw_ids[i - 1] for i in top],
                                          "counts": [int(c) for c in catalog.train_count[top - 1]]})


def _write_semantic_ids(run_dir: Path, bundle: Path, spec: dict[str, Any]) -> list[str]:
    """The semantic-ID table of the run, if it has one: the run folder's own ``semantic_ids.*`` files when it
    holds them, else the codes the weights carry (``sid_codes`` of an ID model with semantic-ID features,
    ``codes`` of a generative model), with the tokenizer's metadata when the run's features folder still has
    it. Runs without semantic IDs get none."""
    if all((run_dir / f).is_file() for f in SEMANTIC_ID_FILES):
        for name in SEMANTIC_ID_FILES:
            shutil.copy2(run_dir / name, bundle / name)
        return list(SEMANTIC_ID_FILES)
    from safetensors import safe_open

    from genrec.semantic_ids.codes import SemanticIds

    with safe_open(str(bundle / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        if "sid_codes" in keys:
            codes = f.get_tensor("sid_codes")
            sizes, j = [], 0
            while f"sid_emb.{j}.weight" in keys:
                sizes.append(int(f.get_slice(f"sid_emb.{j}.weight").get_shape()[0]))
                j += 1
        elif "codes" in keys and "sizes" in spec:
            codes, sizes = f.get_tensor("codes"), [int(s) for s in spec["sizes"]]
        else:
            return []
    meta: dict[str, Any] = {"source": "model weights"}
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    folder = (config.get("features") or {}).get("semantic_ids") if isinstance(config, dict) else None
    if folder and (Path(folder) / SEMANTIC_ID_FILES[1]).is_file():
        try:
            origin = read_json(Path(folder) / SEMANTIC_ID_FILES[1])
            meta.update({k: v for k, v in origin.items() if k != "sizes"}, source=str(folder))
        except (OSError, ValueError):
            pass  # the metadata is a courtesy; the codes come from the weights either way
    try:
        SemanticIds(codes=codes.numpy(), sizes=sizes, meta=meta).save(bundle)
    except GenrecError as e:
        raise GenrecError(f"{run_dir}: the model's semantic-ID table is malformed ({e})") from None
    return list(SEMANTIC_ID_FILES)


def _copy_content(folder: Path, bundle: Path, raw_ids: list[str]) -> list[str]:
    """Copy a content embedding table that holds exactly the catalog's items in dense-id order."""
    from genrec.content.store import ItemEmbeddings

    try:
        emb = ItemEmbeddings.load(folder)
    except GenrecError as e:
        raise GenrecError(f"content: {e}") from None
    if [str(i) for i in emb.item_ids] != raw_ids:
        raise GenrecError(f"content: {folder} holds {emb.n_items:,} items that do not match the run's "
                          f"{len(raw_ids):,} items in dense-id order; encode this run's dataset")
    names = list(CONTENT_FILES)
    if (emb.meta.get("fusion") or {}).get("projection") == "pca":
        if not (folder / PROJECTION_FILE).is_file():
            raise GenrecError(f"content: {folder} was projected with pca but has no {PROJECTION_FILE}")
        names.append(PROJECTION_FILE)
    for name in names:
        shutil.copy2(folder / name, bundle / name)
    return names


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
