"""Steady mixed load on the fleet, and the ledger of every request it made and what the fleet answered.

Requests are sent open-loop at a fixed rate, so an outage does not slow the generator down: what
arrives during a fault is exactly what a real client population would have sent. Every request
carries its own correlation id and a key that identifies its effect (an email address, a page, a
product name, an amount), so the reconciliation can look for the effect of any request, including
those whose answer never arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import httpx

from tests.support.fleet import Fleet
from tests.support.waiting import eventually

Outcome = Literal["accepted", "refused", "rejected", "unknown"]
Kind = Literal["register", "click", "order", "payment", "product_update"]

REQUEST_TIMEOUT_S = 10.0
RECOVERY_BOUND_S = 30.0  # every service must be ready again this soon after a fault ends
RATE_PER_S = 20.0  # requests per second besides the renames; light enough for a shared 2-core machine
# Per ten requests: five clicks, two registrations, two orders (both payment outcomes), one payment;
# product renames run beside them, one at a time, so "the latest name" is well defined.
MIX: tuple[Kind, ...] = (
    "click",
    "register",
    "order",
    "click",
    "payment",
    "click",
    "register",
    "order",
    "click",
    "click",
)
PAGES_PER_PHASE = 5
ORDER_STOCK = 1_000_000
RENAME_INTERVAL_S = 0.5


@dataclass
class Attempt:
    kind: Kind
    key: str
    correlation_id: str
    outcome: Outcome
    status: int | None
    response: dict[str, Any] | None
    detail: str = ""


@dataclass
class Ledger:
    attempts: list[Attempt] = field(default_factory=list)

    def of(self, kind: Kind, *outcomes: Outcome) -> list[Attempt]:
        return [a for a in self.attempts if a.kind == kind and (not outcomes or a.outcome in outcomes)]

    def outcomes(self) -> Counter[str]:
        return Counter(attempt.outcome for attempt in self.attempts)


def classify(response: httpx.Response) -> Outcome:
    if response.is_success:
        return "accepted"
    if response.status_code == 503:
        return "refused"
    return "rejected"


@dataclass
class Phase:
    """What one fault's load runs against: a product to order and one to rename, made for this phase."""

    name: str
    index: int
    order_product_id: int
    renamed_product_id: int


async def prepare_phase(fleet: Fleet, http: httpx.AsyncClient, name: str, index: int) -> Phase:
    products = fleet.url("productservice")
    ordered = await http.post(f"{products}/products", json={"name": f"{name} stock", "stock": ORDER_STOCK})
    renamed = await http.post(f"{products}/products", json={"name": f"{name} rename 0"})
    assert ordered.status_code == renamed.status_code == 201, (ordered.text, renamed.text)
    phase = Phase(name, index, ordered.json()["id"], renamed.json()["id"])

    async def stocked() -> bool:
        response = await http.get(f"{fleet.url('inventoryservice')}/inventory/{phase.order_product_id}")
        return response.status_code == 200 and response.json()["available"] == ORDER_STOCK

    await eventually(stocked, timeout=30, message="inventory did not take the phase's stock")
    return phase


class LoadGenerator:
    def __init__(self, fleet: Fleet, http: httpx.AsyncClient, phase: Phase, ledger: Ledger, rate_per_s: float) -> None:
        self._fleet = fleet
        self._http = http
        self._phase = phase
        self._ledger = ledger
        self._interval_s = 1.0 / rate_per_s
        self._in_flight: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._counter = itertools.count(1)

    async def __aenter__(self) -> LoadGenerator:
        self._tasks = [asyncio.create_task(self._send_mix()), asyncio.create_task(self._rename_forever())]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop sending and wait for every request already sent to be answered or to time out."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._in_flight:
            await asyncio.gather(*self._in_flight)

    async def _send_mix(self) -> None:
        started = time.monotonic()
        for tick, kind in enumerate(itertools.cycle(MIX)):
            task = asyncio.create_task(self._send(kind, next(self._counter)))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            # Open loop: the schedule is fixed in advance and does not wait for answers.
            await asyncio.sleep(max(0.0, started + (tick + 1) * self._interval_s - time.monotonic()))

    async def _rename_forever(self) -> None:
        for number in itertools.count(1):
            await self._send("product_update", number)
            await asyncio.sleep(RENAME_INTERVAL_S)

    async def _send(self, kind: Kind, number: int) -> None:
        phase = self._phase
        correlation_id = f"fault-{phase.name}-{kind}-{number}"
        method, service, path, body, key = self._request(kind, number)
        try:
            response = await self._http.request(
                method,
                f"{self._fleet.url(service)}{path}",
                json=body,
                headers={"X-Correlation-ID": correlation_id},
                timeout=REQUEST_TIMEOUT_S,
            )
        except httpx.ConnectError as exc:
            # Nothing reached the service (it is down): as definite a refusal as a 503.
            self._ledger.attempts.append(Attempt(kind, key, correlation_id, "refused", None, None, repr(exc)))
            return
        except httpx.HTTPError as exc:
            # Sent, but the answer was lost: the request may or may not have taken effect.
            self._ledger.attempts.append(Attempt(kind, key, correlation_id, "unknown", None, None, repr(exc)))
            return
        outcome = classify(response)
        payload = response.json() if outcome == "accepted" else None
        detail = "" if outcome == "accepted" else response.text[:300]
        self._ledger.attempts.append(Attempt(kind, key, correlation_id, outcome, response.status_code, payload, detail))

    def _request(self, kind: Kind, number: int) -> tuple[str, str, str, dict[str, Any], str]:
        phase = self._phase
        if kind == "register":
            email = f"{phase.name}-{number}@faults.example.com"
            return "POST", "userservice", "/register", {"email": email}, email
        if kind == "click":
            page = click_page(phase, number % PAGES_PER_PHASE)
            return "POST", "analyticsservice", "/track_click", {"user_id": number, "page": page}, page
        if kind == "order":
            behaviour = "succeed" if number % 4 else "fail"
            body = {"product_id": phase.order_product_id, "quantity": 1 + number % 3, "payment_behaviour": behaviour}
            return "POST", "orderservice", "/create_order", body, behaviour
        if kind == "payment":
            amount = payment_amount(phase, number)
            return "POST", "paymentservice", "/process_payment", {"amount": str(amount), "currency": "EUR"}, str(amount)
        name = f"{phase.name} rename {number}"
        return "PUT", "productservice", f"/products/{phase.renamed_product_id}", {"name": name}, name


def click_page(phase: Phase, slot: int) -> str:
    return f"/faults/{phase.name}/{slot}"


def payment_amount(phase: Phase, number: int) -> Decimal:
    """Unique per request across the suite, so a payment whose answer was lost can still be found."""
    return (Decimal(phase.index * 1_000_000 + number) / 100).quantize(Decimal("0.01"))
