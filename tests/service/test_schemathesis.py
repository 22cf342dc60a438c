"""Schema-driven fuzzing (issue 14, item 7): schemathesis, every check, against a live ``trdetr-serve``.

Bounded: ``EXAMPLES`` schema-valid and as many schema-invalid generated requests per operation, one
live server on 127.0.0.1. One deliberate setting: ``positive_data_acceptance`` also accepts 422,
because what makes a request usable is partly beyond JSON Schema (``features_b64`` must be base64 of
a ``.npy`` of the model's width; a text query needs a bundle with a text encoder; the stored video must
exist) -- the service answers those with a 422 that says what to fix, which the other checks still
hold to the documented error shape. And 409: a video file upload to a server whose bundle has no video
encoders (the small bundle here) is refused with 409 ``encoder_missing`` whatever the file.
"""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from test_live_server import clean_env, free_port, live_server

EXAMPLES = 25
CONFIG = {
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]}},
}


@pytest.fixture(scope="module")
def api_schema(small_bundle, redis_url, key_prefix):
    env = clean_env(TRDETR_BUNDLE_DIR=str(small_bundle), REDIS_URL=redis_url, TRDETR_REDIS_KEY_PREFIX=key_prefix,
                    TRDETR_INTRA_OP_THREADS="1", TRDETR_DEVICE="cpu")
    with live_server(env, free_port()) as client:
        yield schemathesis.openapi.from_url(
            f"{client.base_url}/openapi.json", config=schemathesis.Config.from_dict(CONFIG)
        )


@pytest.mark.slow
def test_every_operation_keeps_its_contract(api_schema):
    """Each operation: its schema examples and generated (positive and negative) cases, every check."""
    failures = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    for operation, mode in itertools.product(operations, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case) -> None:
            case.call_and_validate(timeout=30)

        try:
            check()
        except Unsatisfiable:  # no schema-invalid request exists for an operation without inputs
            assert mode == GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report them all
            failures.append(f"{operation.label} ({mode}): {exc}")
    assert not failures, "\n\n".join(failures)
