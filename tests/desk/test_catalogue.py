"""Every text the desk's templates and code name is in the catalogue, in Chinese and English."""

from __future__ import annotations

import re
from pathlib import Path

from accident_service.messages import LANGUAGES, catalogue

DESK = Path(__file__).resolve().parents[2] / "accident_service" / "desk"
LITERAL_KEY = re.compile(r"""\bt\(\s*["']((?:desk|photos|checklist)\.[a-z0-9_.\-]+)["']""")


def test_every_literal_key_the_desk_uses_is_in_both_languages():
    sources = [*DESK.glob("templates/*.html"), *DESK.glob("*.py")]
    named = {key for path in sources for key in LITERAL_KEY.findall(path.read_text(encoding="utf-8"))}
    prefixes = {key for key in named if key.endswith((".", "_"))}  # "desk.status." ~ status: a family of keys
    keys = named - prefixes
    assert len(keys) > 100
    assert [p for p in prefixes if not any(key.startswith(p) for key in catalogue())] == []
    missing = sorted(key for key in keys if key not in catalogue())
    assert missing == []
    assert all(set(catalogue()[key]) == set(LANGUAGES) and all(catalogue()[key].values()) for key in keys)


def test_every_desk_key_has_both_languages_and_the_same_placeholders():
    for key, texts in catalogue().items():
        if key.startswith("desk."):
            assert set(re.findall(r"{(\w+)}", texts["zh"])) == set(re.findall(r"{(\w+)}", texts["en"])), key


def test_the_english_audit_labels_read_as_the_page_s_other_labels():
    """Capitalised, as "Status" and "Booked" beside them (noted: "Status: Booked → Ready; slot: 5 → -")."""
    labels = {key: texts["en"] for key, texts in catalogue().items()
              if key.startswith(("desk.audit.field.", "desk.audit.actor.", "desk.audit.action.", "desk.status."))
              or key in ("desk.audit.yes", "desk.audit.no")}
    assert len(labels) > 30
    assert {key: text for key, text in labels.items() if not text[:1].isupper()} == {}


def test_every_photo_item_has_a_name_for_the_desk():
    items = {key.removeprefix("checklist.") for key in catalogue() if key.startswith("checklist.")}
    assert {"scene", "plate_a", "extra"} <= items
    assert {key.removeprefix("desk.checklist.") for key in catalogue() if key.startswith("desk.checklist.")} == items
