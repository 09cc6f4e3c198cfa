"""The OpenAPI description, fuzzed by schemathesis against the app: no 500s, every answer as described.

Bounded: a few examples per operation and generation mode, each within a
deadline, on data that exists (booked cases at two stations, free slots),
with a write token for every station. The whole run must take under a
minute of CPU (its wall time depends on what else the machine runs too;
pytest-timeout stops it at two minutes). Driven through schemathesis'
Python API, one Hypothesis run per operation and mode: its pytest plugin
rewrites a node attribute pytest 9 no longer has.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import timedelta

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

EXAMPLES = 10
DEADLINE = timedelta(seconds=5)  # per example; one takes some 50 ms
CPU_SECONDS = 60
VALID_KEY = re.compile(r"[!-~]{1,200}")


def load_schema(app, seeded, cursors: dict[str, str], token: str):
    """The app's description, generating real case numbers, station codes and cursors too: identifiers only
    the server hands out, which random strings would almost never hit (every path a 404, every cursor a 400)."""
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)

    @schema.auth(refresh_interval=None)
    class BearerToken:  # applied by schemathesis, so that a case generated without it expects the 401
        def get(self, case, context):
            return token

        def set(self, case, data, context):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    known = {"case_no": st.sampled_from(seeded.case_nos), "code": st.sampled_from(sorted(seeded.cases))}

    @schema.hook
    def flatmap_path_parameters(context, path_parameters):
        real = {name: known.get(name, st.just(value)) for name, value in (path_parameters or {}).items()}
        return st.one_of(st.just(path_parameters), st.fixed_dictionaries(real)) if real else st.just(path_parameters)

    @schema.hook
    def map_query(context, query):
        # Only cursors the server gave out: any other is a 400 invalid_cursor (tests/api/test_reads.py).
        if isinstance(query, dict) and "cursor" in query and context.operation.path in cursors:
            return query | {"cursor": cursors[context.operation.path]}
        return query

    @schema.hook
    def map_headers(context, headers):
        # A client sends a new key per intended action; a reused key with another body is a 422 by design
        # (tests/api/test_writes.py), which would hide everything after the first example.
        key = (headers or {}).get("Idempotency-Key")
        if isinstance(key, str) and VALID_KEY.fullmatch(key):
            return headers | {"Idempotency-Key": uuid.uuid4().hex}
        return headers

    return schema


def test_the_api_answers_as_its_description_says(app, client, seeded, make_token):
    token = make_token("schemathesis")
    cursors = {path: client.get(path, headers={"Authorization": f"Bearer {token}"},
                                query_string={"limit": 1}).json["next_cursor"]
               for path in ("/api/v1/cases", "/api/v1/audit-events")}
    schema = load_schema(app, seeded, cursors, token)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 15
    started = time.process_time()
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            # No shrinking: it has no time bound, and the failing example is reported as found.
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=DEADLINE, database=None,
                      phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
            def answers_as_described(case):
                case.call_and_validate()

            answers_as_described()
    assert time.process_time() - started < CPU_SECONDS
