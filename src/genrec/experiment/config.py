"""The experiment file: one YAML file names an experiment, its arms, how traffic splits between them and when it runs.

```yaml
name: ranker-weight
mode: ab                      # ab: each user sees one arm; interleave: every request merges two arms' lists
salt: ranker-weight-2024-06   # a new salt reshuffles users, independently of every other experiment
start: 2024-06-01T00:00:00Z   # times without a zone are read as UTC
end: 2024-06-15T00:00:00Z
arms:
  - name: control             # bundle left out (null): the bundle the server already serves
    share: 0.5
  - name: treatment
    bundle: runs/hstu/bundle
    share: 0.5
    serving: {ranker_weight: 0.5, fresh_share: 0.1, fresh_days: 3,
              exploration: {kind: plackett_luce, temperature: 0.5}}
```

Shares left out split traffic equally; given, each is > 0 and they sum to 1. Interleave mode takes exactly two arms
and no shares (every request sees both). Unknown keys are errors; every error names the field that is wrong.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from genrec.errors import ConfigError

_STRICT = ConfigDict(extra="forbid", frozen=True)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SHARE_TOLERANCE = 1e-6  # shares written as decimals (0.333333) must still sum to 1


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{what} must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or digit), "
                         f"got {value!r}")
    return value


class Exploration(BaseModel):
    """How an arm samples its shown list from the model's scores, so that each shown item has a known propensity
    (:mod:`genrec.experiment.explore`)."""

    model_config = _STRICT

    kind: Literal["none", "plackett_luce", "epsilon"] = Field(
        "none", description="none: the model's order; plackett_luce: sample the list from softmax(score / "
        "temperature) without replacement; epsilon: each slot shows a uniformly drawn candidate with probability "
        "epsilon, the next best one otherwise.")
    temperature: float = Field(1.0, gt=0, description="plackett_luce: divides the scores (small: close to the "
                               "model's order; large: close to uniform).")
    epsilon: float = Field(0.1, gt=0, le=1, description="epsilon: the probability that a slot is explored.")

    @model_validator(mode="after")
    def _fields_match_kind(self) -> Exploration:
        if "temperature" in self.model_fields_set and self.kind != "plackett_luce":
            raise ValueError(f"temperature applies to kind plackett_luce, not {self.kind}")
        if "epsilon" in self.model_fields_set and self.kind != "epsilon":
            raise ValueError(f"epsilon applies to kind epsilon, not {self.kind}")
        return self


class Serving(BaseModel):
    """Serving settings an arm changes; a field left out keeps the bundle's own setting."""

    model_config = _STRICT

    ranker_weight: float | None = Field(None, ge=0, description="Weight of the ranker's z-scored score against the "
                                        "retrieval score (genrec.serve.ranking); left out: the bundle's weight.")
    exploration: Exploration = Field(default_factory=Exploration, description="Sampling of the shown list.")
    fresh_share: float = Field(0.0, ge=0, lt=1, description="Share of the slots reserved for fresh items: "
                               "round(fresh_share * k) of an answer's k slots show items first seen in the last "
                               "fresh_days (genrec.experiment.fresh), spread evenly down the list.")
    fresh_days: float = Field(7.0, gt=0, description="An item is fresh for this many days after it is first seen "
                              "(fractions allowed).")
    fresh_column: str | None = Field(None, min_length=1, description="Catalog column holding each item's publish "
                                     "time (unix seconds, or an Arrow timestamp / date); null or left out: an "
                                     "item is first seen at its first logged exposure or event, and an item the "
                                     "model never trained on and nobody has seen yet counts as fresh.")

    @model_validator(mode="after")
    def _fresh_fields_need_a_share(self) -> Serving:
        unused = {"fresh_days", "fresh_column"} & self.model_fields_set
        if unused and self.fresh_share == 0:
            raise ValueError(f"{', '.join(sorted(unused))} applies only with fresh_share > 0")
        return self


class Arm(BaseModel):
    model_config = _STRICT

    name: str = Field(description="The arm's name, unique in the experiment (logged with every exposure).")
    bundle: Path | None = Field(None, description="Bundle folder this arm serves; null: the server's default.")
    share: float | None = Field(None, gt=0, le=1, description="Share of users (ab mode); left out on every arm: "
                                "equal shares.")
    serving: Serving = Field(default_factory=Serving, description="Serving settings this arm overrides.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "name")


class Experiment(BaseModel):
    """A validated experiment file (:func:`load_experiment`)."""

    model_config = _STRICT

    name: str = Field(description="The experiment's name (logged with every exposure).")
    mode: Literal["ab", "interleave"] = Field("ab", description="ab: a user sees one arm, chosen by hash of "
                                              "(salt, user id); interleave: team-draft merge of two arms' lists.")
    salt: str = Field(min_length=1, description="Mixed into the assignment hash; a new salt reshuffles users "
                      "independently of other experiments.")
    start: datetime = Field(description="When the experiment starts (ISO 8601; no zone: UTC).")
    end: datetime = Field(description="When it ends (after start).")
    arms: list[Arm] = Field(min_length=2, description="Two or more arms.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "name")

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end.isoformat()}) must be after start ({self.start.isoformat()})")
        names = [a.name for a in self.arms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"arms: names must be unique, {', '.join(dup)} repeated")
        given = [a.share is not None for a in self.arms]
        if self.mode == "interleave":
            if len(self.arms) != 2:
                raise ValueError(f"arms: interleave mode merges exactly two arms, got {len(self.arms)}")
            if any(given):
                raise ValueError("arms.share: interleave mode shows both arms on every request; leave share out")
        elif any(given):
            if not all(given):
                missing = [a.name for a in self.arms if a.share is None]
                raise ValueError(f"arms.share: give a share for every arm or none (missing: {', '.join(missing)})")
            total = math.fsum(a.share for a in self.arms)
            if abs(total - 1) > SHARE_TOLERANCE:
                raise ValueError(f"arms.share: shares must sum to 1, got {total:g}")
        return self

    @property
    def shares(self) -> tuple[float, ...]:
        """Each arm's share of users, in arm order (equal when the file gives none)."""
        if self.arms[0].share is None:
            return tuple(1 / len(self.arms) for _ in self.arms)
        return tuple(a.share for a in self.arms)

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arms)

    def arm(self, name: str) -> Arm:
        """The arm called ``name``, or a ConfigError listing the arms there are."""
        for a in self.arms:
            if a.name == name:
                return a
        raise ConfigError(f"experiment {self.name}: no arm {name!r} (arms: {', '.join(self.arm_names)})")

    def active(self, at: datetime) -> bool:
        """Whether ``at`` (no zone: UTC) lies in [start, end)."""
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
        return self.start <= at < self.end


def _describe(e: ValidationError) -> str:
    """One clause per problem, naming the field: 'arms.1.share: Input should be greater than 0 (got -0.1)'."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown field")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        shown = "" if err["type"] in ("value_error", "missing") else f" (got {err.get('input')!r})"
        parts.append(f"{loc}: {msg}{shown}" if loc else msg)  # whole-file checks name their fields themselves
    return "; ".join(parts)


def parse_experiment(raw: dict, source: str = "experiment") -> Experiment:
    """An :class:`Experiment` from a mapping (a parsed YAML file), or a ConfigError naming ``source`` and the field."""
    try:
        return Experiment.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_describe(e)}") from None


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; a missing file, bad YAML or a bad field is a ConfigError naming it."""
    from genrec.io import read_yaml_mapping

    return parse_experiment(read_yaml_mapping(path, what="experiment"), str(path))
