"""The message map: every exchange, queue, binding, retry path and dead-letter queue of the fleet.

Read this file to see the whole flow. Publishers name an *event*, never a queue: `ROUTES` says
where each event type goes (and, for a type routed two ways, which events take which route).
Consumers name a `ConsumedQueue`: `QUEUES` says which service consumes which queue and what event
it carries.

Every consumed queue `q` has `q.dlq`: messages that must not be retried (malformed, schema-invalid,
out of attempts, or redelivered past the broker's delivery limit), each with the reason in its headers.

Retries wait in shared tiers, one per back-off delay the consumers use (declared at their start, from
their retry settings): a failed message of `q` is published to the fanout exchange `retry.<delay>ms`
with routing key `q`, waits in the queue `retry.<delay>ms` (a queue-wide TTL), and is dead-lettered to
the default exchange under its own routing key: back into `q`. One tier per delay, because a queue
expires messages from its head only (a 0.5 s retry must never wait behind a 32 s one), and shared by
every queue, because each quorum queue costs the broker file handles and CPU of its own: per-queue
tiers made a fleet of about 180 queues, these about 65.

All queues are durable quorum queues: they survive broker restarts, count redeliveries
(`x-delivery-limit` stops a message that crashes its consumer from looping forever), and
dead-letter at least once (`x-dead-letter-strategy: at-least-once`), so nothing is dropped on
the way to a retry or dead-letter queue.

Every service declares the whole map at startup. Declaration is idempotent, and since every
binding exists before any service publishes, a fanout publish can never reach an exchange
with no queues bound. Changing a queue's arguments here requires deleting the queue on
existing brokers (RabbitMQ refuses to redeclare a queue with different arguments).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import aio_pika

from common.events import (
    ClicksTracked,
    Event,
    GenerateReportJob,
    OrderCancelled,
    OrderCreated,
    PaymentCompleted,
    PaymentFailed,
    PaymentInitiated,
    PaymentRefunded,
    ProductUpdated,
    StockLevelChanged,
    StockLevelSet,
    StockReleased,
    StockReservationFailed,
    StockReserved,
    UserRegistered,
)

# Broker-side guard against poison that kills its consumer before it can be acknowledged.
# The consumer's own retry budget (`max_delivery_attempts`) is the normal path; this only
# counts deliveries the broker had to take back (consumer crash, connection loss).
DELIVERY_LIMIT = 20


class ExchangeKind(StrEnum):
    DIRECT = "direct"
    FANOUT = "fanout"


@dataclass(frozen=True)
class Exchange:
    name: str
    kind: ExchangeKind
    description: str

    @property
    def is_default(self) -> bool:
        return self.name == ""


@dataclass(frozen=True)
class ConsumedQueue:
    """A queue one service consumes, bound to `exchange` (the default exchange routes by queue name)."""

    name: str
    event: type[Event]
    consumer: str
    exchange: Exchange
    description: str

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dlq"


@dataclass(frozen=True)
class Route:
    """Where a published event of type `event` goes; with `when`, only the events it holds for (the
    first route of a type whose `when` holds, or that has none, is taken)."""

    event: type[Event]
    exchange: Exchange
    routing_key: str
    publishers: tuple[str, ...] = field(default_factory=tuple)
    when: Callable[[Event], bool] | None = None

    def applies_to(self, event: Event) -> bool:
        return self.when is None or self.when(event)

    @property
    def condition(self) -> str:
        """What `when` selects, in words (its docstring)."""
        return (self.when.__doc__ or self.when.__name__).strip() if self.when is not None else ""


# --- Exchanges -------------------------------------------------------------------------------

DEFAULT_EXCHANGE = Exchange(
    "", ExchangeKind.DIRECT, "RabbitMQ's default exchange: delivers to the queue named by the routing key."
)
PRODUCT_UPDATES = Exchange(
    "product_updates", ExchangeKind.FANOUT, "Every product change, copied to search, cache and analytics."
)
PAYMENT_COMPLETED = Exchange(
    "payment_completed",
    ExchangeKind.FANOUT,
    "Settled saga payments: the payment audit trail and the saga participants.",
)
PAYMENT_FAILED = Exchange("payment_failed", ExchangeKind.FANOUT, "Failed saga payments: every participant compensates.")

STOCK_LEVELS = Exchange(
    "stock_levels", ExchangeKind.FANOUT, "Inventory's stock figures after every change, for whoever shows them."
)

# Scenario 5, the saga: facts more than one participant reacts to.
STOCK_RESERVED_EXCHANGE = Exchange(
    "stock_reserved", ExchangeKind.FANOUT, "Stock reserved for an order: payment charges it, the order logs the step."
)
ORDER_CANCELLED_EXCHANGE = Exchange(
    "order_cancelled",
    ExchangeKind.FANOUT,
    "Orders the saga gave up on (timeout): inventory and payment undo or skip their step.",
)

EXCHANGES: tuple[Exchange, ...] = (
    PRODUCT_UPDATES,
    PAYMENT_COMPLETED,
    PAYMENT_FAILED,
    STOCK_LEVELS,
    STOCK_RESERVED_EXCHANGE,
    ORDER_CANCELLED_EXCHANGE,
)


# --- Queues ----------------------------------------------------------------------------------

# Scenario 1: fire-and-forget
USER_REGISTERED = ConsumedQueue(
    "user_registered_queue",
    UserRegistered,
    "emailservice",
    DEFAULT_EXCHANGE,
    "New users, for the welcome email.",
)

# Scenario 2: background payment
PAYMENT_INITIATED = ConsumedQueue(
    "payment_initiated_queue",
    PaymentInitiated,
    "paymentservice",
    DEFAULT_EXCHANGE,
    "Accepted payments waiting for the (slow) payment gateway.",
)
PAYMENT_COMPLETED_AUDIT = ConsumedQueue(
    "payment_completed_queue",
    PaymentCompleted,
    "paymentservice",
    PAYMENT_COMPLETED,
    "Settled payments, recorded in the payment audit trail: Scenario 2's straight from the default "
    "exchange (as the design document has it), the saga's through the `payment_completed` fanout.",
)

# Scenario 3: fan-out
SEARCH_PRODUCT_UPDATES = ConsumedQueue(
    "search_product_updates_queue",
    ProductUpdated,
    "searchservice",
    PRODUCT_UPDATES,
    "Product changes to reindex for search.",
)
CACHE_PRODUCT_UPDATES = ConsumedQueue(
    "cache_product_updates_queue",
    ProductUpdated,
    "cacheservice",
    PRODUCT_UPDATES,
    "Product changes to refresh the product cache.",
)
ANALYTICS_PRODUCT_UPDATES = ConsumedQueue(
    "analytics_product_updates_queue",
    ProductUpdated,
    "analyticsservice",
    PRODUCT_UPDATES,
    "Product changes to count in analytics.",
)

# Scenario 4: CPU job offloading
REPORT_JOBS = ConsumedQueue(
    "report_jobs_queue",
    GenerateReportJob,
    "reportservice",
    DEFAULT_EXCHANGE,
    "Report jobs for the CPU workers.",
)
REPORT_JOB_DEAD_LETTERS = ConsumedQueue(
    REPORT_JOBS.dead_letter_queue,
    GenerateReportJob,
    "reportservice",
    DEFAULT_EXCHANGE,
    "The dead letters of `report_jobs_queue` (past the broker's delivery limit, out of attempts, rejected): "
    "each one's job is marked failed, and the message acknowledged, since the job table now holds it. One "
    "that names no job goes on to `report_jobs_queue.dlq.dlq`, where it stays for operators.",
)

# Scenario 5: the order saga (choreography)
ORDER_CREATED = ConsumedQueue(
    "order_created_queue",
    OrderCreated,
    "inventoryservice",
    DEFAULT_EXCHANGE,
    "New orders: inventory reserves their stock.",
)
STOCK_RESERVED = ConsumedQueue(
    "stock_reserved_queue",
    StockReserved,
    "paymentservice",
    STOCK_RESERVED_EXCHANGE,
    "Orders with stock reserved: payment charges them.",
)
INVENTORY_PAYMENT_FAILED = ConsumedQueue(
    "inventory_payment_failed_queue",
    PaymentFailed,
    "inventoryservice",
    PAYMENT_FAILED,
    "Compensation: release the failed order's reservation.",
)
ORDER_PAYMENT_FAILED = ConsumedQueue(
    "order_payment_failed_queue",
    PaymentFailed,
    "orderservice",
    PAYMENT_FAILED,
    "Compensation: mark the order failed with the payment's reason.",
)

# --- Scenario 5, the saga: the steps and compensations beyond the design document's four queues ---
# Success: PaymentCompleted (fanout `payment_completed`) turns the reservation into a sale and
# completes the order. Refusal: StockReservationFailed fails the order, no payment is attempted.
# Timeout: the order service publishes OrderCancelled (fanout `order_cancelled`): inventory releases
# (or never makes) the reservation, payment never charges (or refunds a charge that raced it).
# The order service also hears every other step, for the saga timeline of GET /orders/{id}.
INVENTORY_PAYMENT_COMPLETED = ConsumedQueue(
    "inventory_payment_completed_queue",
    PaymentCompleted,
    "inventoryservice",
    PAYMENT_COMPLETED,
    "Saga payments settled: the order's reservation becomes a sale.",
)
ORDER_PAYMENT_COMPLETED = ConsumedQueue(
    "order_payment_completed_queue",
    PaymentCompleted,
    "orderservice",
    PAYMENT_COMPLETED,
    "Saga payments settled: the order completes.",
)
ORDER_STOCK_RESERVED = ConsumedQueue(
    "order_stock_reserved_queue",
    StockReserved,
    "orderservice",
    STOCK_RESERVED_EXCHANGE,
    "Stock reserved: a step of the order's saga timeline.",
)
ORDER_STOCK_RESERVATION_FAILED = ConsumedQueue(
    "order_stock_reservation_failed_queue",
    StockReservationFailed,
    "orderservice",
    DEFAULT_EXCHANGE,
    "Reservation refused (insufficient or unknown stock): the order fails, nothing was charged.",
)
ORDER_STOCK_RELEASED = ConsumedQueue(
    "order_stock_released_queue",
    StockReleased,
    "orderservice",
    DEFAULT_EXCHANGE,
    "Compensation done by inventory: a step of the order's saga timeline.",
)
ORDER_PAYMENT_REFUNDED = ConsumedQueue(
    "order_payment_refunded_queue",
    PaymentRefunded,
    "orderservice",
    DEFAULT_EXCHANGE,
    "A late charge of a cancelled order was refunded: a step of the order's saga timeline.",
)
INVENTORY_ORDER_CANCELLED = ConsumedQueue(
    "inventory_order_cancelled_queue",
    OrderCancelled,
    "inventoryservice",
    ORDER_CANCELLED_EXCHANGE,
    "Cancelled orders: release their reservation (or reverse their sale), or never reserve for them.",
)
PAYMENT_ORDER_CANCELLED = ConsumedQueue(
    "payment_order_cancelled_queue",
    OrderCancelled,
    "paymentservice",
    ORDER_CANCELLED_EXCHANGE,
    "Cancelled orders: never charge them, or refund a charge that raced the cancellation.",
)

# Stock: inventory owns it; the catalogue sets it and shows inventory's figure
INVENTORY_STOCK_SET = ConsumedQueue(
    "inventory_stock_set_queue",
    StockLevelSet,
    "inventoryservice",
    DEFAULT_EXCHANGE,
    "Stock set through the catalogue: inventory adjusts its available figure.",
)
PRODUCT_STOCK_LEVELS = ConsumedQueue(
    "product_stock_levels_queue",
    StockLevelChanged,
    "productservice",
    STOCK_LEVELS,
    "Inventory's figures, shown as the catalogue's stock.",
)
SEARCH_STOCK_LEVELS = ConsumedQueue(
    "search_stock_levels_queue",
    StockLevelChanged,
    "searchservice",
    STOCK_LEVELS,
    "Inventory's figures, shown as the stock of search hits.",
)
CACHE_STOCK_LEVELS = ConsumedQueue(
    "cache_stock_levels_queue",
    StockLevelChanged,
    "cacheservice",
    STOCK_LEVELS,
    "Inventory's figures, shown as the stock of cached products.",
)

# Scenario 6: buffered ingestion
CLICK_TRACKED = ConsumedQueue(
    "click_tracked_queue",
    ClicksTracked,
    "analyticsservice",
    DEFAULT_EXCHANGE,
    "Raw clicks (one message carries those accepted together), buffered for the aggregating consumer.",
)

QUEUES: tuple[ConsumedQueue, ...] = (
    USER_REGISTERED,
    PAYMENT_INITIATED,
    PAYMENT_COMPLETED_AUDIT,
    SEARCH_PRODUCT_UPDATES,
    CACHE_PRODUCT_UPDATES,
    ANALYTICS_PRODUCT_UPDATES,
    REPORT_JOBS,
    REPORT_JOB_DEAD_LETTERS,
    ORDER_CREATED,
    STOCK_RESERVED,
    INVENTORY_PAYMENT_FAILED,
    ORDER_PAYMENT_FAILED,
    INVENTORY_PAYMENT_COMPLETED,
    ORDER_PAYMENT_COMPLETED,
    ORDER_STOCK_RESERVED,
    ORDER_STOCK_RESERVATION_FAILED,
    ORDER_STOCK_RELEASED,
    ORDER_PAYMENT_REFUNDED,
    INVENTORY_ORDER_CANCELLED,
    PAYMENT_ORDER_CANCELLED,
    INVENTORY_STOCK_SET,
    PRODUCT_STOCK_LEVELS,
    SEARCH_STOCK_LEVELS,
    CACHE_STOCK_LEVELS,
    CLICK_TRACKED,
)


# --- Routes: where each event type is published ------------------------------------------------


def _settles_an_order(event: Event) -> bool:
    """order_id set: a saga's payment"""
    return isinstance(event, PaymentCompleted) and event.order_id is not None


# A Scenario 2 payment concerns the audit trail alone: delivering it to the saga's queues too would cost
# the broker and two services a delivery and a transaction each, only for them to ignore it.

ROUTES: tuple[Route, ...] = (
    Route(UserRegistered, DEFAULT_EXCHANGE, USER_REGISTERED.name, ("userservice",)),
    Route(PaymentInitiated, DEFAULT_EXCHANGE, PAYMENT_INITIATED.name, ("paymentservice",)),
    Route(PaymentCompleted, PAYMENT_COMPLETED, "", ("paymentservice",), when=_settles_an_order),
    Route(PaymentCompleted, DEFAULT_EXCHANGE, PAYMENT_COMPLETED_AUDIT.name, ("paymentservice",)),
    Route(PaymentFailed, PAYMENT_FAILED, "", ("paymentservice",)),
    Route(ProductUpdated, PRODUCT_UPDATES, "", ("productservice",)),
    Route(GenerateReportJob, DEFAULT_EXCHANGE, REPORT_JOBS.name, ("reportservice",)),
    Route(OrderCreated, DEFAULT_EXCHANGE, ORDER_CREATED.name, ("orderservice",)),
    Route(StockReserved, STOCK_RESERVED_EXCHANGE, "", ("inventoryservice",)),
    Route(StockReservationFailed, DEFAULT_EXCHANGE, ORDER_STOCK_RESERVATION_FAILED.name, ("inventoryservice",)),
    Route(StockReleased, DEFAULT_EXCHANGE, ORDER_STOCK_RELEASED.name, ("inventoryservice",)),
    Route(OrderCancelled, ORDER_CANCELLED_EXCHANGE, "", ("orderservice",)),
    Route(PaymentRefunded, DEFAULT_EXCHANGE, ORDER_PAYMENT_REFUNDED.name, ("paymentservice",)),
    Route(StockLevelSet, DEFAULT_EXCHANGE, INVENTORY_STOCK_SET.name, ("productservice",)),
    Route(StockLevelChanged, STOCK_LEVELS, "", ("inventoryservice",)),
    Route(ClicksTracked, DEFAULT_EXCHANGE, CLICK_TRACKED.name, ("analyticsservice",)),
)

_ROUTES_BY_EVENT: dict[type[Event], tuple[Route, ...]] = {}
for _route in ROUTES:
    _ROUTES_BY_EVENT[_route.event] = (*_ROUTES_BY_EVENT.get(_route.event, ()), _route)


def routes_of(event_type: type[Event]) -> tuple[Route, ...]:
    try:
        return _ROUTES_BY_EVENT[event_type]
    except KeyError:
        raise LookupError(f"no route for {event_type.__name__}: add one to common.topology.ROUTES") from None


def route_for(event: Event) -> Route:
    for route in routes_of(type(event)):
        if route.applies_to(event):
            return route
    raise LookupError(f"no route of {type(event).__name__} applies to {event!r}")


def route_for_publisher(event: Event, service: str) -> Route:
    """The route of `event`, provided the map lists `service` as one of its publishers: an event
    published by a service the map does not know of would be invisible in the documented flow."""
    route = route_for(event)
    if service not in route.publishers:
        raise LookupError(
            f"{service} publishes {type(event).__name__}, but common.topology lists only {route.publishers}"
        )
    return route


def queues_reached(route: Route) -> tuple[ConsumedQueue, ...]:
    """The queues a message published by `route` lands in (the default exchange reaches any queue by name)."""
    if route.exchange.is_default:
        return tuple(queue for queue in QUEUES if queue.name == route.routing_key)
    return tuple(queue for queue in QUEUES if queue.exchange == route.exchange)


def queues_consumed_by(service: str) -> tuple[ConsumedQueue, ...]:
    return tuple(queue for queue in QUEUES if queue.consumer == service)


def dead_letters_of(queue: ConsumedQueue) -> ConsumedQueue | None:
    """The consumed queue whose dead-letter queue `queue` is, if it is one (a service following what
    another queue's consumer gave up on)."""
    return next((other for other in QUEUES if other.dead_letter_queue == queue.name), None)


def queue_named(name: str) -> ConsumedQueue:
    for queue in QUEUES:
        if queue.name == name:
            return queue
    raise LookupError(f"no consumed queue named {name!r}")


# --- Declaration -------------------------------------------------------------------------------

_QUORUM = {"x-queue-type": "quorum"}
_AT_LEAST_ONCE_DEAD_LETTERING = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def main_queue_arguments(queue: ConsumedQueue) -> dict[str, str | int]:
    return {
        **_QUORUM,
        **_AT_LEAST_ONCE_DEAD_LETTERING,
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue.dead_letter_queue,
    }


def retry_delay_ms(delay_s: float) -> int:
    return max(1, round(delay_s * 1000))


def retry_tier(delay_s: float) -> str:
    """The exchange, and the queue bound to it, where failed messages wait `delay_s` (the routing key they
    are published with names the queue they go back to)."""
    return f"retry.{retry_delay_ms(delay_s)}ms"


def retry_tier_arguments(delay_s: float) -> dict[str, str | int]:
    # Every message of the tier waits the same time, so they expire in the order they came. With no
    # dead-letter routing key, each is dead-lettered under the routing key it was published with: the
    # name of the queue it failed in.
    return {
        **_QUORUM,
        **_AT_LEAST_ONCE_DEAD_LETTERING,
        "x-message-ttl": retry_delay_ms(delay_s),
        "x-dead-letter-exchange": "",
    }


def dead_letter_queue_arguments(queue: ConsumedQueue) -> dict[str, str | int]:
    return dict(_QUORUM)


async def declare_exchange(channel: aio_pika.abc.AbstractChannel, exchange: Exchange) -> aio_pika.abc.AbstractExchange:
    if exchange.is_default:
        return channel.default_exchange
    return await channel.declare_exchange(
        exchange.name, aio_pika.ExchangeType(exchange.kind.value), durable=True, auto_delete=False
    )


async def declare_queue(channel: aio_pika.abc.AbstractChannel, queue: ConsumedQueue) -> aio_pika.abc.AbstractQueue:
    """Declare `queue` with its dead-letter companion and its binding; return the main queue.

    A queue that is another's dead-letter queue keeps the arguments every dead-letter queue has (RabbitMQ
    refuses a redeclaration with others, and brokers have it so already): what its own consumer gives up
    on goes on to its own `.dlq`, forwarded by the consumer."""
    await channel.declare_queue(
        queue.dead_letter_queue, durable=True, auto_delete=False, arguments=dead_letter_queue_arguments(queue)
    )
    dead_letters = dead_letters_of(queue)
    arguments = main_queue_arguments(queue) if dead_letters is None else dead_letter_queue_arguments(dead_letters)
    main = await channel.declare_queue(queue.name, durable=True, auto_delete=False, arguments=arguments)
    if not queue.exchange.is_default:
        exchange = await declare_exchange(channel, queue.exchange)
        await main.bind(exchange, routing_key="")
    return main


async def declare_retry_tiers(
    channel: aio_pika.abc.AbstractChannel, delays_s: Iterable[float]
) -> dict[str, aio_pika.abc.AbstractExchange]:
    """Declare the retry tier of each delay (its exchange, its queue, the binding); return the exchanges."""
    declared = {}
    for delay_s in sorted(set(delays_s)):
        name = retry_tier(delay_s)
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True, auto_delete=False)
        tier = await channel.declare_queue(
            name, durable=True, auto_delete=False, arguments=retry_tier_arguments(delay_s)
        )
        await tier.bind(exchange, routing_key="")
        declared[name] = exchange
    return declared


async def declare_topology(
    channel: aio_pika.abc.AbstractChannel,
    exchanges: Iterable[Exchange] = EXCHANGES,
    queues: Iterable[ConsumedQueue] = QUEUES,
) -> dict[str, aio_pika.abc.AbstractExchange]:
    """Declare every exchange, queue and binding; return the exchanges by name for publishing."""
    declared = {DEFAULT_EXCHANGE.name: channel.default_exchange}
    for exchange in exchanges:
        declared[exchange.name] = await declare_exchange(channel, exchange)
    for queue in queues:
        await declare_queue(channel, queue)
    return declared
