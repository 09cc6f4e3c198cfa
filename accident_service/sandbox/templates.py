"""Template messages as the platform handles them since 2023-05-04 (WECHAT.md §5 "Template").

* A template must be added in the console before it can be sent (here:
  ``register_template``); an unknown template_id answers 40037. An account holds
  at most 25 templates. Keywords are named as the console names them, after
  their type and position (``thing2``, ``time4``, ``keyword1`` in older
  industry templates), so a registration cannot invent keys such as ``case_no``.
* ``data`` must fill every keyword of the template with a valid value
  (template_fields); otherwise 47003 with the platform's errmsg,
  "argument invalid! data.<key>.value is empty" or "... invalid" (the texts
  developers report from the platform). Keys the template does not have,
  ``first`` and ``remark`` among them, are accepted and not shown; colours are
  not shown either.
* ``client_msg_id``: "对于同一个openid + client_msg_id, 只发送一条消息, 10分钟有效"
  (模板消息接口, sendTemplateMessage). The documentation names no error for the
  repeat, so the emulator answers it as the call that did send (errcode 0 with
  the first send's msgid) and the user gets nothing new; after 10 minutes the
  id is free again. Ids over 64 bytes answer 45067, the limit the platform
  documents for the mass-send clientmsgid (the template page states none).

Not thread-safe on its own: PlatformApi calls it under its lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from accident_service.sandbox.template_fields import FIELD_TYPES, field_type_of, value_problem

MAX_TEMPLATES = 25
CLIENT_MSG_ID_SECONDS = 10 * 60
CLIENT_MSG_ID_MAX_BYTES = 64


@dataclass(frozen=True)
class Template:
    template_id: str
    fields: dict[str, str]  # keyword -> type, in the order the card shows them
    approved: dict[str, frozenset[str]] = field(default_factory=dict)  # const keyword -> approved values


@dataclass(frozen=True)
class Card:
    """What the user sees of a template message: the keywords' values, in the template's order."""

    template_id: str
    shown: dict[str, str]
    not_shown: dict[str, Any]  # first, remark and any key the template lacks, as sent
    url: str | None

    @property
    def text(self) -> str:
        """The card as one line, the stable shape ``messages_to`` uses: "[模板] value1 / value2"."""
        return "[模板] " + " / ".join(self.shown.values())


class TemplateRefused(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"{errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


class TemplateBook:
    """The account's registered templates and the client_msg_ids sent in the last 10 minutes."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._templates: dict[str, Template] = {}
        self._recent_ids: dict[tuple[str, str], tuple[float, int]] = {}  # (openid, id) -> (sent at, msgid)
        self.duplicates_dropped = 0

    def register(self, template_id: str, fields: Mapping[str, str] | Iterable[str], *,
                 const_values: Mapping[str, Iterable[str]] | None = None) -> Template:
        if not template_id:
            raise ValueError("a template needs an id")
        if template_id not in self._templates and len(self._templates) >= MAX_TEMPLATES:
            raise ValueError(f"an account holds at most {MAX_TEMPLATES} templates")
        typed = dict(fields) if isinstance(fields, Mapping) else {name: _inferred_type(name) for name in fields}
        for name, field_type in typed.items():
            if field_type not in FIELD_TYPES:
                raise ValueError(f"{name}: unknown field type {field_type!r} (one of {', '.join(FIELD_TYPES)})")
            if field_type_of(name) != field_type:  # the console names keywords after their type: thing2, time4
                raise ValueError(f"{name}: not a keyword name for a {field_type} field (e.g. {field_type}1)")
        approved = {name: frozenset(values) for name, values in (const_values or {}).items()}
        for name in typed:
            if typed[name] == "const" and name not in approved:
                raise ValueError(f"{name} is a const field: give its approved values in const_values")
        template = Template(template_id, typed, approved)
        self._templates[template_id] = template
        return template

    def template(self, template_id: Any) -> Template:
        """The registered template. Raises TemplateRefused (40037) for an id the account does not have."""
        template = self._templates.get(template_id) if isinstance(template_id, str) else None
        if template is None:
            raise TemplateRefused(40037, "invalid template_id")
        return template

    def card_for(self, template: Template, payload: dict[str, Any]) -> Card:
        """Check a send's data against ``template``; returns what the user would see. Raises TemplateRefused."""
        data = payload["data"]
        shown: dict[str, str] = {}
        for name, field_type in template.fields.items():
            entry = data.get(name)
            value = entry.get("value") if isinstance(entry, dict) else None
            problem = value_problem(field_type, value, template.approved.get(name, frozenset()))
            if problem:
                raise TemplateRefused(47003, f"argument invalid! data.{name}.value {problem}")
            shown[name] = str(value)
        not_shown = {key: entry for key, entry in data.items() if key not in template.fields}
        url = payload.get("url") if isinstance(payload.get("url"), str) else None
        return Card(template.template_id, shown, not_shown, url)

    def check_client_msg_id(self, openid: str, client_msg_id: Any) -> int | None:
        """The msgid of an earlier send this one repeats (the platform drops it), else None.

        Raises TemplateRefused for an id that is not a string or is over 64 bytes.
        """
        if client_msg_id is None:
            return None
        if not isinstance(client_msg_id, str) or len(client_msg_id.encode("utf-8")) > CLIENT_MSG_ID_MAX_BYTES:
            raise TemplateRefused(45067, "clientmsgid size out of limit")
        now = self._clock()
        self._recent_ids = {key: sent for key, sent in self._recent_ids.items()
                            if now - sent[0] < CLIENT_MSG_ID_SECONDS}
        earlier = self._recent_ids.get((openid, client_msg_id))
        if earlier is None:
            return None
        self.duplicates_dropped += 1
        return earlier[1]

    def remember_client_msg_id(self, openid: str, client_msg_id: str | None, msgid: int) -> None:
        if client_msg_id is not None:
            self._recent_ids[(openid, client_msg_id)] = (self._clock(), msgid)


def _inferred_type(name: str) -> str:
    field_type = field_type_of(name)
    if field_type is None:
        raise ValueError(f"{name}: no type in the name (thing2, time4...): pass a mapping name -> type")
    return field_type
