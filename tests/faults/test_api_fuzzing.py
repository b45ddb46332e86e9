"""Fuzzing every service's HTTP API from its own OpenAPI schema: no input may produce a 5xx or hang.

Schemathesis draws valid (positive) and invalid (negative) requests for every operation each service
documents, sends them to the fleet running as processes, and checks every answer: never a server
error, always within the timeout, with a status code, content type and body the schema documents,
invalid input always refused with a 4xx, and no 2xx that reports an error instead of refusing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, CheckContext, CheckFunction, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from devtools.fleet import SERVICES
from tests.e2e.conftest import ARTIFACTS, FAST_FLEET_ENVIRONMENT
from tests.faults.conftest import FaultReport
from tests.faults.reconcile import ReportRow
from tests.support.fleet import Fleet
from tests.support.infra import isolated_infra

pytestmark = pytest.mark.faults

# Examples drawn per operation and generation mode (valid, then invalid): about 2,100 requests over the
# ten services' 54 operations, ~30 s for the module on the shared 2-core machine (budget: 3 minutes).
EXAMPLES_PER_OPERATION = 50
# A request that takes longer than this is a hang, and fails the test like a server error does.
REQUEST_TIMEOUT_S = 10.0

FUZZ_FLEET_ENVIRONMENT = {
    **FAST_FLEET_ENVIRONMENT,
    # Every accepted POST /generate_report burns this much CPU in a worker; fuzzing accepts dozens of them.
    "REPORT_CPU_SECONDS": "0.05",
}


def no_error_reported_as_success(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A 2xx must mean success: an API that answers 200 with an error in the body hides failures."""
    if 200 <= response.status_code < 300 and "json" in (response.headers.get("content-type") or [""])[0]:
        body = response.json()
        if isinstance(body, dict) and ("error" in body or body.get("status") == "error"):
            raise AssertionError(f"{response.status_code} with an error in the body: {body}")
    return None


CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    no_error_reported_as_success,
]

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    # Reproducible in CI: the same examples on every run, and no example database left in the tree.
    derandomize=True,
    database=None,
    deadline=None,  # the request timeout bounds each example instead
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


@pytest.fixture(scope="module")
async def fleet() -> AsyncIterator[Fleet]:
    """All ten services on a vhost and database of their own, so the fuzzed data lands nowhere else."""
    async with isolated_infra() as infra:
        running = Fleet(infra, ARTIFACTS / f"{infra.vhost}-fuzz", FUZZ_FLEET_ENVIRONMENT)
        try:
            await running.start()
            yield running
        finally:
            await running.close()


@dataclass
class Tally:
    """What the fuzzing sent and how the fleet answered, for the fault report."""

    answers: Counter[str] = field(default_factory=Counter)
    operations: int = 0


@pytest.fixture(scope="module")
def tally(fault_report: FaultReport) -> Iterator[Tally]:
    counted = Tally()
    yield counted
    answers = counted.answers
    fault_report.add(
        ReportRow(
            fault="API fuzzing (schemathesis)",
            sent=sum(answers.values()),
            accepted=answers["2xx"],
            refused=answers["4xx"],
            unknown=answers["no answer"],
            lost=None,
            duplicated=None,
            recovery_s=None,
            settled_s=None,
        ),
        f"{counted.operations} operations of the ten services, {EXAMPLES_PER_OPERATION} valid and "
        f"{EXAMPLES_PER_OPERATION} invalid examples each (derandomized); answers by class: "
        + ", ".join(f"{name} {count}" for name, count in sorted(answers.items()))
        + ". No 5xx and no request over the 10 s timeout is allowed; every invalid request must be refused "
        "with a 4xx, and every answer must match the documented status codes and schemas. *Refused* here "
        "counts the 4xx answers.",
    )


def fuzz(base_url: str, operation: APIOperation, mode: GenerationMode, tally: Tally) -> None:
    """Send `operation` the examples of `mode` (valid or invalid requests) and check every answer."""
    sent = 0

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def examples(case: Case) -> None:
        nonlocal sent
        sent += 1
        try:
            response = case.call(base_url=base_url, timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException:
            tally.answers["no answer"] += 1
            raise
        tally.answers[f"{response.status_code // 100}xx"] += 1
        case.validate_response(response, checks=CHECKS)

    try:
        examples()
    except Unsatisfiable:
        # Nothing about the operation can be invalid (no parameters, or one any string satisfies).
        if mode is not GenerationMode.NEGATIVE:
            raise
    if mode is GenerationMode.POSITIVE:
        assert sent > 0, f"no valid request for {operation.label} was drawn"


@pytest.mark.parametrize("service", [service.name for service in SERVICES])
def test_no_input_breaks_the_api(fleet: Fleet, service: str, tally: Tally) -> None:
    base_url = fleet.url(service)
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=REQUEST_TIMEOUT_S)
    failures = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        tally.operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(base_url, operation, mode, tally)
            # Schemathesis reports its checks' failures as an exception group; every operation is fuzzed
            # and all failures are reported together below.
            except (Exception, BaseExceptionGroup) as exc:
                notes = "".join(getattr(exc, "__notes__", []))
                failures.append(f"--- {operation.label} ({mode.value}): {type(exc).__name__}\n{exc}\n{notes}")
    assert operations > 0, f"{service} documents no operation"
    assert not failures, f"{len(failures)} of {service}'s operations failed:\n\n" + "\n\n".join(failures)
