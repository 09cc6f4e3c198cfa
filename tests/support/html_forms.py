"""Read a page's forms as a browser would submit them (stdlib HTML parser): for tests that post the real forms."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._current: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._current = Form(attributes.get("action", ""), attributes.get("method", "get").lower())
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and attributes.get("name"):
            if attributes.get("type") in ("radio", "checkbox") and "checked" not in attributes:
                return
            self._current.fields[attributes["name"]] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def forms_of(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


def form_to(html: str, action_ending: str) -> Form:
    """The one form whose action ends with ``action_ending``; AssertionError when there is none or several."""
    found = [form for form in forms_of(html) if form.action.endswith(action_ending)]
    assert len(found) == 1, f"{len(found)} forms post to ...{action_ending}"
    return found[0]
