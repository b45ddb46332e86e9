"""Scenario 1, fire-and-forget: register -> UserRegistered -> one welcome email, even across an outage."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.support.fleet import Fleet
from tests.support.rabbitmq import Management
from tests.support.waiting import eventually, stays

pytestmark = pytest.mark.e2e


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


async def emails_to(http: httpx.AsyncClient, fleet: Fleet, user_id: int) -> list[dict]:
    response = await http.get(f"{fleet.url('emailservice')}/emails", params={"user_id": user_id})
    assert response.status_code == 200, response.text
    return list(response.json())


async def test_design_doc_example_registers_and_emails(fleet: Fleet, http: httpx.AsyncClient) -> None:
    email = unique_email()
    response = await http.post(f"{fleet.url('userservice')}/register", json={"email": email})

    assert response.status_code == 202, response.text
    body = response.json()
    assert body == {
        "id": body["id"],
        "email": email,
        "message": "User registered successfully. Welcome email will be sent shortly.",
        "event_published": True,
    }
    assert isinstance(body["id"], int)

    user = (await http.get(f"{fleet.url('userservice')}/users/{body['id']}")).json()
    assert user["email"] == email

    emails = await eventually(lambda: emails_to(http, fleet, body["id"]), message="no welcome email")
    assert len(emails) == 1
    assert emails[0]["recipient"] == email
    assert emails[0]["subject"]
    assert emails[0]["sent_at"]


async def test_duplicate_email_is_a_conflict(fleet: Fleet, http: httpx.AsyncClient) -> None:
    email = unique_email()
    first = await http.post(f"{fleet.url('userservice')}/register", json={"email": email})
    assert first.status_code == 202
    again = await http.post(f"{fleet.url('userservice')}/register", json={"email": email.upper()})
    assert again.status_code == 409
    assert "already registered" in again.json()["detail"]


@pytest.mark.parametrize(
    "payload",
    [{"email": "not-an-email"}, {"email": ""}, {}, {"email": "a@example.com", "unexpected": 1}, {"email": 42}],
)
async def test_invalid_registration_is_refused(fleet: Fleet, http: httpx.AsyncClient, payload: dict) -> None:
    response = await http.post(f"{fleet.url('userservice')}/register", json=payload)
    assert response.status_code == 422
    assert response.json()["detail"]


async def test_unknown_user_is_not_found(fleet: Fleet, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{fleet.url('userservice')}/users/987654321")
    assert response.status_code == 404
    assert response.json() == {"detail": "user 987654321 not found"}


async def test_registrations_during_an_email_outage_are_all_emailed_once(
    fleet: Fleet, http: httpx.AsyncClient, management: Management
) -> None:
    await fleet.stop("emailservice")
    try:
        responses = await asyncio.gather(
            *(
                http.post(f"{fleet.url('userservice')}/register", json={"email": unique_email("outage")})
                for _ in range(25)
            )
        )
        assert [response.status_code for response in responses] == [202] * 25
        user_ids = [response.json()["id"] for response in responses]

        # Nothing is lost while the consumer is away: the queue holds every event.
        await eventually(
            lambda: _depth_at_least(management, "user_registered_queue", 25),
            timeout=20,
            message="the queue did not buffer the registrations",
        )
    finally:
        await fleet.start("emailservice")

    async def everyone_emailed() -> bool:
        counts = await asyncio.gather(*(emails_to(http, fleet, user_id) for user_id in user_ids))
        return all(len(emails) >= 1 for emails in counts)

    await eventually(everyone_emailed, timeout=30, message="not every registration was emailed")

    async def each_exactly_once() -> bool:
        counts = await asyncio.gather(*(emails_to(http, fleet, user_id) for user_id in user_ids))
        return all(len(emails) == 1 for emails in counts)

    await stays(each_exactly_once, duration=1.5, message="a registration was emailed more than once")


async def _depth_at_least(management: Management, queue: str, count: int) -> bool:
    return await management.depth(queue) >= count
