"""Schemathesis over the published OpenAPI schema, in process and with a bounded number of
examples per operation: no server error, every response as the schema describes it (status,
content type, headers, body) and invalid data refused.

Documented as intended, hence not checked: `positive_data_acceptance` (schema-valid requests
that the server still refuses, each with a documented status: random bytes as `video` are not
a video, 415; a video together with a duration, or neither, 422; ids that name no job, 404;
outputs of jobs not finished, 409; a full queue, 429) and the stateful checks that need links
between operations the schema does not declare (`use_after_free`,
`ensure_resource_availability`).
"""

from __future__ import annotations

import itertools

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the fuzz test needs the 'test' extra")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server.conftest import MakeApp  # noqa: E402

# Per operation and mode (valid, invalid): CI stays fast, every operation still sees odd input.
EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]


def test_api_conforms_to_its_schema(make_app: MakeApp) -> None:
    # Jobs the fuzzer queues end fast (tiny model, short limits) and never outlive the test.
    app = make_app(max_queue=2, job_timeout_s=1.0, shutdown_timeout_s=0.5)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def conforms(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS)

        try:
            conforms()
        except Unsatisfiable:  # nothing to make invalid: an operation without inputs
            assert mode is GenerationMode.NEGATIVE, operation.label
