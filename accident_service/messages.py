"""The driver-facing message catalogue.

Every sentence a driver reads lives in ``accident_service/catalogue/*.yaml``
under a dotted key, with a Chinese (``zh``) and an English (``en``) text.
Code asks for a key and a language; wording changes never touch logic.
Each feature owns one YAML file so edits stay local; keys must be unique
across files (a duplicate is a startup error, not a silent override).
"""

from __future__ import annotations

import functools
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

LANGUAGES = ("zh", "en")
DEFAULT_LANGUAGE = "zh"
_CATALOGUE_DIR = Path(__file__).parent / "catalogue"
# libyaml's parser where PyYAML was built with it (its wheels are): the same safe loading, 8 ms for the catalogue
# where the pure-Python parser takes about 55 at every process's start (each gunicorn worker, each command).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class CatalogueError(RuntimeError):
    """The catalogue files are inconsistent (duplicate key, missing language)."""


@functools.cache
def catalogue() -> dict[str, dict[str, str]]:
    merged: dict[str, dict[str, str]] = {}
    for path in sorted(_CATALOGUE_DIR.glob("*.yaml")):
        entries = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER) or {}
        for key, texts in entries.items():
            if key in merged:
                raise CatalogueError(f"message key {key!r} defined twice (again in {path.name})")
            missing = [lang for lang in LANGUAGES if lang not in (texts or {})]
            if missing:
                raise CatalogueError(f"message key {key!r} in {path.name} lacks {missing}")
            merged[key] = {lang: str(texts[lang]) for lang in LANGUAGES}
    return merged


def normalise_language(language: str | None) -> str:
    return language if language in LANGUAGES else DEFAULT_LANGUAGE


def text(key: str, language: str | None = None, /, **params: object) -> str:
    """Return the text for ``key`` in ``language`` with ``params`` filled in.

    Raises KeyError for an unknown key: a typo must fail tests, not reach a driver.
    """
    template = catalogue()[key][normalise_language(language)]
    return template.format(**params) if params else template


_EN_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def time_window(starts_at: datetime, ends_at: datetime, timezone: str, language: str | None) -> str:
    """A slot in the station's wall time: "11月25日 14:00-14:30" / "25 Nov 14:00-14:30"."""
    zone = ZoneInfo(timezone)
    start, end = starts_at.astimezone(zone), ends_at.astimezone(zone)
    return text("booking.when", language, month=start.month, month_name=_EN_MONTHS[start.month - 1],
                day=start.day, start=f"{start:%H:%M}", end=f"{end:%H:%M}")
