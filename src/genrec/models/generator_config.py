"""The settings every semantic-ID generator shares (``genrec.models.generators``: tiger, hstu-gen): where its IDs
come from, its width, the beam search of validation and test, and cold-start mixing. Each generator's config adds
its own architecture on top."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ColdMixing(BaseModel):
    """TIGER's cold-start mixing: items never seen in training whose semantic ID shares a generated beam's
    first ``prefix`` codes join the top-K, scored just below that beam, at most ``ceil(epsilon * n)`` of every
    top n. Off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: float = Field(0.0, ge=0, le=1, description="Largest share of cold items in any top n (TIGER's "
                           "epsilon); 0 turns the mixing off.")
    prefix: int | None = Field(None, ge=1, description="Leading codes a cold item must share with a beam to "
                               "join after it; default every content level, i.e. all codes but the final "
                               "uniqueness code. Must be below the number of codes per item.")


class GeneratorConfig(BaseModel):
    """Fields shared by the semantic-ID generators' configs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str  # each generator narrows it to its own literal; declared here so that it stays the first field
    semantic_ids: str | None = Field(None, description="Folder holding the items' SemanticIds (default "
                                     "runs/semantic_ids/<dataset>/rqkmeans).")
    dim: int = Field(128, ge=1, description="Model width d.")
    init_std: float = Field(0.02, gt=0, description="Std of the embedding init.")
    beam_width: int = Field(20, ge=1, description="Beams kept when decoding for validation and test; metrics "
                            "are reported only at K <= beam_width.")
    valid_sample: int | None = Field(None, ge=1, description="Validate on this many randomly chosen (fixed) "
                                     "validation users instead of all of them (beam search is not free).")
    cold_mixing: ColdMixing = Field(default_factory=ColdMixing, description="Mix items never seen in training "
                                    "into the top-K by shared ID prefix (TIGER's cold start); off by default.")
