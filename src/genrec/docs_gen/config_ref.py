"""The configuration reference: every field of the pydantic config models (run configs, data schemas, the
baselines, tokenizers, content fusion, ANN indexes, data generators) with its type, default and description,
read from the models so the page follows the code."""

from __future__ import annotations

import enum
import types
import typing
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from genrec.docs_gen.md import page, table, text

_BOUNDS = ((Ge, "ge", ">="), (Gt, "gt", ">"), (Le, "le", "<="), (Lt, "lt", "<"), (MinLen, "min_length", "length >="),
           (MaxLen, "max_length", "length <="))


def _sections() -> list[tuple[str, str, type[BaseModel]]]:
    """(YAML path or use, anchor, model) in page order; nested models found by walking the fields get their own."""
    from genrec.content.encode import FusionConfig
    from genrec.content.video import VideoConfig
    from genrec.data.expand import ExpandConfig
    from genrec.data.ooc import PrepareConfig
    from genrec.data.schema import DataSchema
    from genrec.data.synth import SynthConfig
    from genrec.experiment.config import Experiment
    from genrec.models import DCNConfig, DINConfig, GBDTConfig, HSTUConfig, RankerConfig, SASRecConfig
    from genrec.models.cold_blend import ColdBlendConfig
    from genrec.models.content_knn import ContentKNNConfig
    from genrec.models.hstu_generator import HSTUGeneratorConfig
    from genrec.models.itemknn import ItemKNNConfig
    from genrec.models.popularity import PopularityConfig
    from genrec.models.tiger import TigerConfig
    from genrec.semantic_ids.tokenizer import TokenizerConfig
    from genrec.serve.ann import AnnConfig
    from genrec.train.config import RunConfig

    return [("run config (`genrec train --config FILE`)", "run", RunConfig),
            ("`model:` name: sasrec", "model-sasrec", SASRecConfig),
            ("`model:` name: hstu", "model-hstu", HSTUConfig),
            ("`model:` name: tiger (the semantic-ID generator)", "model-tiger", TigerConfig),
            ("`model:` name: hstu-gen (the decoder-only semantic-ID generator)", "model-hstu-gen",
             HSTUGeneratorConfig),
            ("`model:` name: ranker (the generative ranker)", "model-ranker", RankerConfig),
            ("`model:` name: dcn", "model-dcn", DCNConfig),
            ("`model:` name: din", "model-din", DINConfig),
            ("`model:` name: gbdt (LightGBM)", "model-gbdt", GBDTConfig),
            ("data schema (`--schema FILE`)", "schema", DataSchema),
            ("item-kNN (`genrec eval --model itemknn --param key=value`)", "itemknn", ItemKNNConfig),
            ("popularity (`genrec eval --model popularity`)", "popularity", PopularityConfig),
            ("content-kNN", "content-knn", ContentKNNConfig),
            ("cold blend (`genrec.models.cold_blend`; chosen on validation by `benchmarks/cold_blend.py`)",
             "cold-blend", ColdBlendConfig),
            ("semantic-ID tokenizer (`genrec tokenize`)", "tokenizer", TokenizerConfig),
            ("content fusion (`genrec content encode`)", "fusion", FusionConfig),
            ("video frames (`genrec content encode --video-col`)", "video", VideoConfig),
            ("experiment file (`genrec serve --experiment FILE`)", "experiment", Experiment),
            ("approximate index (`genrec export --ann`)", "ann", AnnConfig),
            ("out-of-core preparation (`genrec data prepare`)", "prepare", PrepareConfig),
            ("synthetic log (`genrec data synth`)", "synth", SynthConfig),
            ("fractal expansion (`genrec data expand`)", "expand", ExpandConfig)]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel classes an annotation refers to (through unions, containers and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _type_name(annotation: Any, anchors: dict[type, str]) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        return _type_name(args[0], anchors)
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a, anchors) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a, anchors) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type) and annotation in anchors:
        return f"[{annotation.__name__}](#{anchors[annotation]})"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(f'"{m.value}"' for m in annotation)
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section defaults)"
    if isinstance(value, enum.Enum):
        value = value.value
    return f"`{'null' if value is None else value}`"


def _bounds(field: Any) -> str:
    found = []
    for meta in field.metadata:
        for kind, attr, sign in _BOUNDS:
            if isinstance(meta, kind):
                found.append(f"{sign} {getattr(meta, attr)}")
    return ", ".join(found)


def _rows(model: type[BaseModel], anchors: dict[type, str]) -> list[list[str]]:
    rows = []
    for name, field in model.model_fields.items():
        kind = _type_name(field.annotation, anchors)
        if bounds := _bounds(field):
            kind += f" ({bounds})"
        rows.append([f"`{name}`", kind, _default(field), (field.description or "").replace("\n", " ")])
    return rows


def missing_descriptions() -> list[str]:
    """``Model.field`` for every documented field that has no description (a test keeps this empty)."""
    return [f"{m.__name__}.{n}" for m, _, _ in _entries() for n, f in m.model_fields.items()
            if not f.description and n != "name"]


def _entries() -> list[tuple[type[BaseModel], str, str]]:
    """(model, anchor, title) for the listed models, each followed by the nested models its fields use (their
    YAML path as the title); a model already shown is not repeated."""
    seen: set[type] = set()
    out: list[tuple[type[BaseModel], str, str]] = []

    def visit(model: type[BaseModel], anchor: str, title: str, path: str) -> None:
        seen.add(model)
        out.append((model, anchor, title))
        for name, field in model.model_fields.items():
            for nested in _models_in(field.annotation):
                if nested not in seen and name != "model":
                    sub = f"{path}.{name}" if path else name
                    visit(nested, f"{anchor}-{name}".replace("_", "-"), f"`{sub}` ({nested.__name__})", sub)

    for title, anchor, model in _sections():
        path = "model" if anchor.startswith("model-") else ""
        visit(model, anchor, title, path)
    return out


def config_reference() -> str:
    """Markdown for every config model."""
    entries = _entries()
    anchors = {model: anchor for model, anchor, _ in entries}
    blocks = ["Every field of genrec's configuration files and options, generated from the typed configs "
              "(pydantic models): unknown keys are errors. In a run config the sections nest as in the YAML "
              "(`train.lr`, `model.dim`); `genrec train --set train.lr=0.001` overrides one field."]
    for model, anchor, title in entries:
        doc = text((model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "))
        blocks.append(f"## {title} {{#{anchor}}}\n\n{doc}\n\n"
                      + table(["field", "type", "default", "description"], _rows(model, anchors)))
    return page("Configuration reference", *blocks)
