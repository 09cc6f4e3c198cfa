"""What the API says when the lifecycle refuses an action, or a slot cannot be taken: a sentence an integrator
can act on.

``details`` keep the machine-readable ``transition`` and ``reason`` (a slot's
``slot_id`` and ``reason``); ``message`` becomes the desk's English text for that refusal
(``desk.refused.*`` in ``catalogue/desk.yaml``), so one refusal has one
wording whoever reads it. The API acts as staff (``desk/actions.py``): every
reason a staff transition can carry has a text there, which
``tests/api/test_refusals.py`` checks against the lifecycle's table. A reason
without one (a new requirement whose text is not written yet) still gets a
sentence, the desk's "Not done: ..." around the lifecycle's own message.
"""

from __future__ import annotations

from accident_service.booking.appointments import SlotUnavailable
from accident_service.cases.lifecycle import TransitionRefused
from accident_service.desk.labels import refusal

LANGUAGE = "en"  # integrators read English


def sentence(refused: TransitionRefused | SlotUnavailable) -> str:
    """The refusal in a sentence, e.g. "The slot has not started: too early for a no-show."."""
    return refusal(refused, LANGUAGE)


def reword(refused: TransitionRefused | SlotUnavailable) -> None:
    """Give ``refused`` its sentence as the message its answer carries (``str(refused)`` keeps the
    lifecycle's own, for logs)."""
    refused.message = sentence(refused)
