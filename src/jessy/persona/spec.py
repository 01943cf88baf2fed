"""The persona spec: dimensions, frequency bands, constitution, red flags, system prompts."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from jessy.config import RESOURCES, ConfigError, Strict, load_yaml_model

DIMENSIONS = (
    "Emotion", "Cognition", "Practical", "Social", "Creative", "Curiosity", "Intuition", "Pattern",
    "Ethical", "Meta", "Ecological", "Positivity", "Balance", "Security", "Personal",
)
BandName = Literal["low", "mid", "high"]
FlagKind = Literal["meta_commentary", "dependency"]


class Band(Strict):
    min_hz: float = Field(ge=0)
    max_hz: float = Field(gt=0)
    feel: str

    @model_validator(mode="after")
    def _ordered(self) -> Band:
        if self.min_hz >= self.max_hz:
            raise ValueError(f"min_hz ({self.min_hz}) must be below max_hz ({self.max_hz})")
        return self


class Dimension(Strict):
    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    band: BandName
    cues: list[str] = Field(min_length=1)


class Principle(Strict):
    name: str = Field(min_length=1)
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)


class RedFlags(Strict):
    meta_commentary: dict[str, list[str]]
    dependency: dict[str, list[str]]


class SystemPrompts(Strict):
    short: str = Field(min_length=1)
    full: str = Field(min_length=1)


class Persona(Strict):
    name: str = Field(min_length=1)
    summary: str = Field(min_length=1)
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    bands: dict[BandName, Band]
    dimensions: list[Dimension] = Field(min_length=1)
    constitution: list[Principle] = Field(min_length=1)
    red_flags: RedFlags
    system_prompts: SystemPrompts
    special_tokens: list[str] = Field(default_factory=list)
    reference_replies: list[str] = Field(
        default_factory=list, description="replies that define the persona's embedding profile"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Persona:
        names = [d.name for d in self.dimensions]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dimension names must be unique, repeated: {dupes}")
        for d in self.dimensions:
            if d.band not in self.bands:
                raise ValueError(f"dimension {d.name!r} uses band {d.band!r}, which is not defined in bands")
        bands = sorted(self.bands.values(), key=lambda b: b.min_hz)
        for a, b in zip(bands, bands[1:]):
            if a.max_hz > b.min_hz:
                raise ValueError(f"bands overlap: {a.min_hz}-{a.max_hz} Hz and {b.min_hz}-{b.max_hz} Hz")
        bad = [t for t in self.special_tokens if not re.fullmatch(r"<[a-z0-9_]+>", t)]
        if bad:
            raise ValueError(f"special tokens must look like <name>: {bad}")
        for kind in ("meta_commentary", "dependency"):
            lists = getattr(self.red_flags, kind)
            if not any(lists.values()):
                raise ValueError(f"red_flags.{kind} has no phrases")
        return self

    def system_prompt(self, kind: Literal["short", "full", "none"]) -> str | None:
        return None if kind == "none" else getattr(self.system_prompts, kind)

    @property
    def dimension_names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    @cached_property
    def _flag_patterns(self) -> list[tuple[str, str, re.Pattern]]:
        out = []
        for kind in ("meta_commentary", "dependency"):
            for phrases in getattr(self.red_flags, kind).values():
                for phrase in phrases:
                    body = re.escape(normalize_quotes(phrase.lower())).replace(r"\ ", r"\s+")
                    out.append((kind, phrase, re.compile(rf"(?<!\w){body}(?!\w)")))
        return out

    def red_flags_in(self, text: str) -> list[tuple[FlagKind, str]]:
        """Every (kind, phrase) of the persona's red-flag lists found in ``text``, whole words only."""
        low = normalize_quotes(text.lower())
        return [(kind, phrase) for kind, phrase, pat in self._flag_patterns if pat.search(low)]


def normalize_quotes(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'").replace("\u0130", "i").replace("i\u0307", "i")


def bundled_personas() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in (RESOURCES / "personas").iterdir()
                  if p.name.endswith(".yaml"))


def persona_path(ref: str | Path) -> Path:
    """A bundled persona name (``jessy``) or a path to a persona YAML file."""
    ref_s = str(ref)
    if ref_s in bundled_personas():
        return Path(str(RESOURCES / "personas" / f"{ref_s}.yaml"))
    path = Path(ref_s).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{ref_s}: no such persona file (bundled personas: {', '.join(bundled_personas())})"
        )
    return path


def load_persona(ref: str | Path = "jessy") -> Persona:
    return load_yaml_model(Persona, persona_path(ref))
