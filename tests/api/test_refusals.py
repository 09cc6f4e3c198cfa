"""A lifecycle refusal answers the API in a sentence: every reason a staff transition can carry has one."""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest

from accident_service.api import refusals
from accident_service.booking.appointments import SLOT_UNAVAILABLE_REASONS, SlotUnavailable
from accident_service.cases import lifecycle
from accident_service.cases.lifecycle import (
    Actor,
    Attempt,
    NotAllowed,
    RequirementMissing,
    StaleCase,
    TransitionRefused,
    WrongState,
)
from accident_service.desk import labels
from accident_service.messages import catalogue
from accident_service.models import CaseStatus

#: Reasons a staff transition's requirement returns only for a party, with the requirement that shows it.
FOR_PARTIES_ONLY = {"needs_confirmation": lifecycle.party_confirmed}


def returned_reasons(requirement) -> set[str]:
    """The reason strings ``requirement`` can return: what its return statements give, through ``x if c else y``
    (the strings a condition looks up are not returned)."""
    def results(node: ast.expr | None) -> set[str]:
        if isinstance(node, ast.IfExp):
            return results(node.body) | results(node.orelse)
        if isinstance(node, ast.Constant):
            return {node.value} if isinstance(node.value, str) else set()
        assert node is None, f"{requirement.__name__} returns {ast.unparse(node)}: enumerate its reasons here"
        return set()

    tree = ast.parse(textwrap.dedent(inspect.getsource(requirement)))
    return {reason for ret in ast.walk(tree) if isinstance(ret, ast.Return) for reason in results(ret.value)}


def staff_refusals() -> list[TransitionRefused | SlotUnavailable]:
    """Every refusal the API can meet: it acts as staff (desk/actions.py), so every requirement of a transition
    staff may make, every state, a stale case, an actor refused, and every reason a slot cannot be taken."""
    found: list[TransitionRefused | SlotUnavailable] = [StaleCase("confirm", "stale"), NotAllowed("book", "actor")]
    found += [SlotUnavailable(5, reason, f"slot 5: {reason}") for reason in SLOT_UNAVAILABLE_REASONS]
    found += [WrongState("confirm", status.value) for status in CaseStatus]
    reasons = {reason for transition in lifecycle.TABLE if Actor.STAFF in transition.actors
               for requirement in transition.requires for reason in returned_reasons(requirement)}
    return found + [RequirementMissing("x", reason, f"cannot x case X: {reason}")
                    for reason in sorted(reasons - FOR_PARTIES_ONLY.keys())]


def test_the_enumeration_sees_the_requirements_reasons():
    assert returned_reasons(lifecycle.slot_started) == {"no_appointment", "not_started"}
    assert returned_reasons(lifecycle.retake_request_valid) == {"no_such_item", "retake_pending"}
    assert returned_reasons(lifecycle.staff_reason) == {"reason_required", "reason_too_long"}
    assert len({r.reason for r in staff_refusals() if isinstance(r, RequirementMissing)}) >= 6


@pytest.mark.parametrize("refused", staff_refusals(), ids=lambda r: f"{type(r).__name__}-{r.details['reason']}")
def test_every_refusal_staff_can_meet_has_a_sentence_in_the_catalogue(refused):
    assert labels.refusal_key(refused) in catalogue(), f"no text for {refused.details['reason']!r}: add desk.refused.*"
    said = refusals.sentence(refused)
    assert said[:1].isupper() and said.endswith(".") and "_" not in said and "Not done" not in said, said


def test_a_reason_only_a_party_meets_is_never_met_by_staff(settings):
    for requirement in FOR_PARTIES_ONLY.values():
        attempt = Attempt(case=None, actor=Actor.STAFF, party=None, now=None, settings=settings, details={})
        assert requirement(attempt) is None


def test_sentences_are_the_desks_english_texts():
    assert refusals.sentence(RequirementMissing("no_show", "not_started", "cannot no_show case X: not_started")) \
        == catalogue()["desk.refused.not_started"]["en"]
    assert refusals.sentence(WrongState("confirm", "retake_requested", "case X is retake_requested; cannot confirm")) \
        == "Not possible while the case's status is “Retake requested”; nothing was changed."


def test_a_reason_without_a_text_still_gets_a_sentence():
    refused = RequirementMissing("complete", "new_rule", "cannot complete case X: new_rule")
    assert refusals.sentence(refused) == "Not done: cannot complete case X: new_rule"


def test_the_description_says_what_to_act_on(client):
    described = client.get("/api/v1/openapi.json").json["info"]["description"]
    assert "`details.reason`" in described and "`message` is an English sentence for a person" in described
