"""Column roles of a user's own files, given by CLI flags or a small YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genrec.errors import ConfigError
from genrec.io import read_yaml_mapping

Format = Literal["auto", "parquet", "csv", "tsv", "sequences"]


class InteractionSchema(BaseModel):
    """Where each role lives in an interaction file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Format = Field("auto", description="File format; 'auto' picks by suffix (.parquet, .csv, .tsv, .txt).")
    user: str = Field("user_id", description="Column holding the raw user id (string or int).")
    item: str = Field("item_id", description="Column holding the raw item id (string or int).")
    timestamp: str | None = Field(None, description="Optional numeric or datetime column used for ordering.")
    event: str | None = Field(None, description="Optional event-type column (click, like, ...).")
    value: str | None = Field(None, description="Optional numeric value column (rating, watch time, ...).")
    delimiter: str | None = Field(None, description="CSV delimiter; default ',' for csv and tab for tsv.")
    header: bool = Field(True, description="Whether a CSV/TSV file starts with a header row.")


class ItemSchema(BaseModel):
    """Where each role lives in an item (catalog) file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Format = Field("auto", description="File format; 'auto' picks by suffix (.parquet, .csv, .tsv).")
    item: str = Field("item_id", description="Column holding the raw item id; must match the interactions.")
    text: list[str] = Field(default_factory=list, description="Text columns (title, description, ...).")
    tags: str | None = Field(None, description="Optional column of tags or categories.")
    image: str | None = Field(None, description="Optional column with an image path or URL.")
    delimiter: str | None = Field(None, description="CSV delimiter; default ',' for csv and tab for tsv.")
    header: bool = Field(True, description="Whether a CSV/TSV file starts with a header row.")


class DataSchema(BaseModel):
    """A YAML data description: ``interactions: {path, ...}`` and optionally ``items: {path, ...}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interactions: InteractionSchema = Field(InteractionSchema(), description="Column roles of the interaction "
                                            "file.")
    items: ItemSchema | None = Field(None, description="Column roles of the item catalog file (optional).")
    interactions_path: str | None = Field(None, description="Interaction file, used when the command is given "
                                          "'-' instead of a path.")
    items_path: str | None = Field(None, description="Item catalog file (titles, text, tags, images).")


def load_schema(path: str | Path) -> DataSchema:
    raw = read_yaml_mapping(path, "schema")
    try:
        return DataSchema.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {format_validation_error(e)}") from None


def format_validation_error(e: ValidationError) -> str:
    """One line per problem, naming the field: 'interactions.user: Input should be a valid string'."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(root)"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
