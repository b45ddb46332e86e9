from __future__ import annotations

from collections import Counter

from common import topology
from common.events import ALL_EVENTS, UserRegistered
from common.topology import QUEUES, ROUTES, ExchangeKind
from devtools.fleet import SERVICES_BY_NAME

DESIGN_DOC_QUEUES = {
    "user_registered_queue",
    "payment_initiated_queue",
    "payment_completed_queue",
    "search_product_updates_queue",
    "cache_product_updates_queue",
    "analytics_product_updates_queue",
    "report_jobs_queue",
    "order_created_queue",
    "stock_reserved_queue",
    "inventory_payment_failed_queue",
    "order_payment_failed_queue",
    "click_tracked_queue",
}


def test_design_doc_names_are_kept() -> None:
    assert {queue.name for queue in QUEUES} >= DESIGN_DOC_QUEUES
    assert topology.PRODUCT_UPDATES.name == "product_updates"
    assert topology.PRODUCT_UPDATES.kind is ExchangeKind.FANOUT
    assert topology.PAYMENT_FAILED.name == "payment_failed"
    assert topology.PAYMENT_FAILED.kind is ExchangeKind.FANOUT
    fanout_queues = {q.name for q in QUEUES if q.exchange == topology.PRODUCT_UPDATES}
    assert fanout_queues == {
        "search_product_updates_queue",
        "cache_product_updates_queue",
        "analytics_product_updates_queue",
    }
    assert {q.name for q in QUEUES if q.exchange == topology.PAYMENT_FAILED} == {
        "inventory_payment_failed_queue",
        "order_payment_failed_queue",
    }


def test_names_are_unique_including_companions() -> None:
    # A queue that consumes another's dead letters is named as that queue's `.dlq`: the one name shared.
    names = [
        name
        for q in QUEUES
        for name in (q.name, q.dead_letter_queue)
        if not (name == q.name and topology.dead_letters_of(q) is not None)
    ] + [topology.retry_tier(0.5), topology.retry_tier(2)]
    assert [name for name, count in Counter(names).items() if count > 1] == []


class _RecordingChannel:
    """Just enough of a channel for `declare_queue`: the arguments each queue is declared with."""

    def __init__(self) -> None:
        self.declared: dict[str, list[dict[str, object]]] = {}

    async def declare_queue(self, name: str, *, arguments: dict[str, object], **_: object) -> object:
        self.declared.setdefault(name, []).append(arguments)
        return self


async def test_a_consumed_dead_letter_queue_is_declared_as_the_dead_letter_queue_it_is() -> None:
    dead_letters = topology.REPORT_JOB_DEAD_LETTERS
    assert dead_letters.name == topology.REPORT_JOBS.dead_letter_queue
    assert topology.dead_letters_of(dead_letters) is topology.REPORT_JOBS
    assert topology.dead_letters_of(topology.REPORT_JOBS) is None
    channel = _RecordingChannel()
    for queue in (topology.REPORT_JOBS, dead_letters):
        await topology.declare_queue(channel, queue)  # type: ignore[arg-type]
    # Both declarations agree (RabbitMQ refuses a second one with other arguments), and as brokers have it.
    assert channel.declared[dead_letters.name] == [topology.dead_letter_queue_arguments(topology.REPORT_JOBS)] * 2
    assert channel.declared["report_jobs_queue.dlq.dlq"] == [topology.dead_letter_queue_arguments(dead_letters)]
    assert channel.declared["report_jobs_queue"] == [topology.main_queue_arguments(topology.REPORT_JOBS)]


def test_every_route_reaches_at_least_one_consumed_queue() -> None:
    for route in ROUTES:
        targets = topology.queues_reached(route)
        assert targets, f"{route.event.__name__} is published where no queue receives it"
        assert all(q.event is route.event for q in targets), f"{route.event.__name__} reaches the wrong queue"


def test_every_consumed_event_has_a_publisher_and_every_event_a_route() -> None:
    routed = {route.event for route in ROUTES}
    assert {q.event for q in QUEUES} <= routed
    assert set(ALL_EVENTS) == routed


def test_an_event_type_routed_two_ways_ends_with_a_route_for_every_other_event() -> None:
    for event_type in {route.event for route in ROUTES}:
        *conditional, last = topology.routes_of(event_type)
        assert all(route.when is not None and route.condition for route in conditional), event_type
        assert last.when is None, f"some {event_type.__name__} would have no route"


def test_publishers_and_consumers_are_fleet_services() -> None:
    for route in ROUTES:
        assert route.publishers
        assert set(route.publishers) <= set(SERVICES_BY_NAME)
    for queue in QUEUES:
        assert queue.consumer in SERVICES_BY_NAME


def test_queue_arguments_wire_retry_and_dead_letter_paths() -> None:
    queue = topology.USER_REGISTERED
    main = topology.main_queue_arguments(queue)
    assert main["x-queue-type"] == "quorum"
    assert main["x-dead-letter-exchange"] == ""
    assert main["x-dead-letter-routing-key"] == "user_registered_queue.dlq"
    assert main["x-dead-letter-strategy"] == "at-least-once"
    assert main["x-delivery-limit"] == topology.DELIVERY_LIMIT
    retry = topology.retry_tier_arguments(0.5)
    assert retry["x-dead-letter-exchange"] == ""
    assert "x-dead-letter-routing-key" not in retry, "expired retries go back under their own routing key"
    assert retry["x-dead-letter-strategy"] == "at-least-once"
    assert retry["x-message-ttl"] == 500, "every message of a retry tier waits the same time"
    assert topology.retry_tier(0.5) == "retry.500ms"
    assert topology.retry_tier(32) == "retry.32000ms"
    assert topology.dead_letter_queue_arguments(queue) == {"x-queue-type": "quorum"}


def test_route_lookup() -> None:
    registered = UserRegistered(user_id=1, email="ada@example.com")
    assert topology.route_for(registered).routing_key == "user_registered_queue"
    assert topology.queues_consumed_by("emailservice") == (topology.USER_REGISTERED,)
    assert topology.queue_named("report_jobs_queue") is topology.REPORT_JOBS
