"""Schemathesis over the gateway's own /openapi.json, against a real Corral (memory, scheduler,
a bubblewrap executor and the gateway, as processes): generated requests, valid and invalid,
for every operation, with every response check on. Any 5xx, or a status, content type, header
or body that /openapi.json does not declare for the operation, fails the test.

Bounded: a few dozen examples per operation, fewer for those that start sandboxes (tasks run,
long-lived sandboxes are created), a timeout per test, no example database.
Not run: the streaming operations, which have no end a check could wait for -- task_events
(Server-Sent Events, open until the task finishes) and the Jupyter proxy (jupyter_*: whatever
Jupyter in a sandbox answers, websockets included). The websockets (noVNC, Jupyter) are not
OpenAPI operations at all.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from gateway_stack import TEST_ENV, make_stack
from harness import Cluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import BaseSchema, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tenant_stack import create_key, first_admin_key

from corral.config import Settings
from gateway.app import create_app

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
]
STREAMING = ["task_events", *(f"jupyter_{m}" for m in ("get", "post", "put", "patch", "delete", "head", "options"))]
# These start sandboxes (a task runs in one; create_sandbox makes a long-lived one).
STARTS_SANDBOXES = ["create_task", "schedule", "create_sandbox"]
EXAMPLES = 50
SANDBOX_EXAMPLES = 12
KEYED_EXAMPLES = 15
REQUEST_TIMEOUT_SECONDS = 30
BOUNDED = {
    "deadline": None,  # time is bounded by the example counts and the pytest timeout, not asserted on
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
}


# Two tasks at a time and short steps: the generated tasks must not load the machine.
SMALL_EXECUTOR = {**TEST_ENV, "CORRAL_EXECUTOR_CAPACITY": "2", "CORRAL_MAX_STEP_TIMEOUT_SECONDS": "5"}


def data_dir(prefix: str) -> Path:
    # Under /tmp, not pytest's root-only tmp tree: sandboxes run as an unprivileged host uid.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def keyless() -> Iterator[Cluster]:
    """The embedded mode: keyless on loopback, with an executor (tasks run, sandboxes start)."""
    directory = data_dir("corral-schemathesis-")
    try:
        yield from make_stack(directory, "memory", "scheduler", "executor", env=SMALL_EXECUTOR)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def keyed() -> Iterator[Cluster]:
    """Keys required: the 401s, 403s, tenants' 404s and quotas' 429s (one sandbox per tenant)."""
    directory = data_dir("corral-schemathesis-keyed-")
    env = {**SMALL_EXECUTOR, "CORRAL_AUTH": "keys", "CORRAL_QUOTA_MAX_SANDBOXES": "1"}
    try:
        yield from make_stack(directory, "memory", "scheduler", "executor", env=env)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def operation_ids() -> list[str]:
    """The operations of the gateway's document, read from the app itself at collection (the
    test checks the served document has the same)."""
    document = create_app(Settings()).openapi()
    return [op["operationId"] for item in document["paths"].values() for op in item.values() if "operationId" in op]


OPERATIONS = operation_ids()
TESTED = [o for o in OPERATIONS if o not in STREAMING]


def served_schema(cluster: Cluster) -> BaseSchema:
    schema = schemathesis.openapi.from_url(cluster.gateway_url + "/openapi.json")
    schema.config.update(base_url=cluster.gateway_url)
    return schema


@pytest.fixture(scope="module")
def keyless_schema(keyless: Cluster) -> BaseSchema:
    return served_schema(keyless)


@pytest.fixture(scope="module")
def keyed_schema(keyed: Cluster) -> BaseSchema:
    return served_schema(keyed)


def test_every_operation_served_is_tested_or_named_as_streaming(keyless_schema: BaseSchema) -> None:
    served = {result.ok().definition.raw["operationId"] for result in keyless_schema.get_all_operations()}
    assert served == set(OPERATIONS)
    assert set(STREAMING) <= served


def check_operation(schema: BaseSchema, operation_id: str, examples: int, callers: list[dict[str, str]]) -> None:
    operation = schema.find_operation_by_id(operation_id)
    # Valid requests and invalid ones (wrong types, out-of-range numbers, missing fields).
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases, caller=st.sampled_from(callers))
    @settings(max_examples=examples, **BOUNDED)
    def answers_as_documented(case: Case, caller: dict[str, str]) -> None:
        case.call_and_validate(headers=caller, checks=CHECKS, timeout=REQUEST_TIMEOUT_SECONDS)

    answers_as_documented()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("operation_id", TESTED)
def test_every_operation_answers_as_documented(keyless_schema: BaseSchema, operation_id: str) -> None:
    examples = SANDBOX_EXAMPLES if operation_id in STARTS_SANDBOXES else EXAMPLES
    check_operation(keyless_schema, operation_id, examples, [{}])


@pytest.fixture(scope="module")
def tenant(keyed: Cluster) -> dict[str, str]:
    admin = first_admin_key(keyed)
    with httpx.Client(base_url=keyed.gateway_url, timeout=30) as api:
        return create_key(api, admin, "fuzzed").headers


@pytest.mark.timeout(60)
@pytest.mark.parametrize("operation_id", TESTED)
def test_every_operation_answers_as_documented_when_keys_are_required(
    keyed_schema: BaseSchema, tenant: dict[str, str], operation_id: str
) -> None:
    # A tenant's key (other tenants' ids are 404, admin routes 403), a wrong key and none (401).
    callers = [tenant, {"Authorization": "Bearer not-a-key"}, {}]
    check_operation(keyed_schema, operation_id, KEYED_EXAMPLES, callers)
