"""Event schemas: what travels between services.

Every event shares an envelope (`event_id`, `event_type`, `occurred_at`, `correlation_id`,
`version`) and carries everything its consumers need, so no consumer has to call back
into the publisher. Consumers are tolerant readers: unknown fields are ignored, so a
publisher may add fields without breaking anyone; a breaking change bumps `version`, and
a consumer refuses (dead-letters) a version newer than it understands.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, EmailStr, Field, StringConstraints, model_validator

from common.correlation import current_correlation_id

PaymentBehaviour = Literal["succeed", "fail"]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Money = Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=2)]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """The envelope. Subclasses fix `event_type` with a Literal and add their payload."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    # The newest envelope/payload version this code understands; bump on a breaking change.
    schema_version: ClassVar[int] = 1

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    event_type: str
    occurred_at: AwareDatetime = Field(default_factory=utc_now)
    correlation_id: str = Field(default_factory=current_correlation_id, min_length=1, max_length=128)
    version: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _version_is_understood(self) -> Event:
        if self.version > self.schema_version:
            raise ValueError(
                f"{self.event_type} version {self.version} is newer than this consumer "
                f"understands (up to {self.schema_version})"
            )
        return self

    @classmethod
    def type_name(cls) -> str:
        return str(cls.model_fields["event_type"].default)


# --- Scenario 1: fire-and-forget ----------------------------------------------------------------


class UserRegistered(Event):
    event_type: Literal["UserRegistered"] = "UserRegistered"
    user_id: int
    email: EmailStr


# --- Scenario 2 and the saga: payments ----------------------------------------------------------


class PaymentInitiated(Event):
    event_type: Literal["PaymentInitiated"] = "PaymentInitiated"
    payment_id: str
    amount: Money
    currency: CurrencyCode
    # Forces the simulated gateway's answer (demos, tests); None applies PAYMENT_FAILURE_RATE.
    payment_behaviour: PaymentBehaviour | None = None


class PaymentCompleted(Event):
    event_type: Literal["PaymentCompleted"] = "PaymentCompleted"
    payment_id: str
    transaction_id: str
    amount: Money
    currency: CurrencyCode
    # Set when the payment settles a saga's order, so participants can finish their step.
    order_id: int | None = None
    product_id: int | None = None
    quantity: int | None = None


class PaymentFailed(Event):
    """Carries everything compensation needs: which order, which product, how much to release."""

    event_type: Literal["PaymentFailed"] = "PaymentFailed"
    payment_id: str
    order_id: int
    product_id: int
    quantity: int = Field(gt=0)
    reason: str


# --- Scenario 3: fan-out ------------------------------------------------------------------------


class ProductUpdated(Event):
    """The product's full new state; `product_version` lets consumers drop stale or repeated updates."""

    event_type: Literal["ProductUpdated"] = "ProductUpdated"
    product_id: int
    name: str
    stock: int = Field(ge=0)
    price: Decimal | None = None
    description: str | None = None
    product_version: int = Field(ge=1)
    updated_at: AwareDatetime


# --- Scenario 4: CPU job offloading -------------------------------------------------------------


class GenerateReportJob(Event):
    event_type: Literal["GenerateReportJob"] = "GenerateReportJob"
    job_id: str
    report_type: str
    parameters: dict[str, Any] = Field(default_factory=dict)


# --- Scenario 5: the order saga -----------------------------------------------------------------


class OrderCreated(Event):
    event_type: Literal["OrderCreated"] = "OrderCreated"
    order_id: int
    product_id: int
    quantity: int = Field(gt=0)
    payment_behaviour: PaymentBehaviour | None = None


class StockReserved(Event):
    event_type: Literal["StockReserved"] = "StockReserved"
    order_id: int
    product_id: int
    quantity: int = Field(gt=0)
    payment_behaviour: PaymentBehaviour | None = None


# --- Scenario 5: the saga's other steps and its compensation -------------------------------------


class StockReservationFailed(Event):
    """Inventory refused the order (`insufficient_stock`, `unknown_product`): no payment is attempted."""

    event_type: Literal["StockReservationFailed"] = "StockReservationFailed"
    order_id: int
    product_id: int
    quantity: int = Field(gt=0)
    reason: str = Field(min_length=1, max_length=200)
    # What was available when the reservation was refused (None: inventory does not know the product).
    available: int | None = Field(default=None, ge=0)


class StockReleased(Event):
    """Inventory gave an order's stock back: its reservation (or, `sale_reversed`, its sale) is undone."""

    event_type: Literal["StockReleased"] = "StockReleased"
    order_id: int
    product_id: int
    quantity: int = Field(gt=0)
    # Why the order failed: the payment's reason (`payment_declined`) or the cancellation's (`timeout`).
    reason: str = Field(min_length=1, max_length=200)
    sale_reversed: bool = False


class OrderCancelled(Event):
    """The order service gave up on an order (`timeout`): every participant undoes its step, and a
    participant that has not acted yet never will (payment does not charge, inventory does not reserve)."""

    event_type: Literal["OrderCancelled"] = "OrderCancelled"
    order_id: int
    product_id: int
    quantity: int = Field(gt=0)
    reason: str = Field(min_length=1, max_length=200)


class PaymentRefunded(Event):
    """A charge for an order that was cancelled meanwhile (a late payment after a timeout) was refunded."""

    event_type: Literal["PaymentRefunded"] = "PaymentRefunded"
    payment_id: str
    refund_id: str
    order_id: int
    product_id: int
    quantity: int = Field(gt=0)
    amount: Money
    currency: CurrencyCode
    reason: str = Field(min_length=1, max_length=200)


# --- Stock: inventory owns it, the catalogue shows inventory's figure -----------------------------


class StockLevelSet(Event):
    """The catalogue sets a product's sellable stock (`stock` in POST/PUT /products, and the seed).
    Inventory adjusts `available` to it, recording the difference as a restock (or write-off)."""

    event_type: Literal["StockLevelSet"] = "StockLevelSet"
    product_id: int
    available: int = Field(ge=0)
    # The catalogue version that set it: inventory ignores a set older than one it applied.
    product_version: int = Field(ge=1)


class StockLevelChanged(Event):
    """Inventory's figures for one product after any change (reservation, release, sale, adjustment)."""

    event_type: Literal["StockLevelChanged"] = "StockLevelChanged"
    product_id: int
    available: int = Field(ge=0)
    reserved: int = Field(ge=0)
    sold: int = Field(ge=0)
    # Increases with every change of this product's figures: consumers drop older ones.
    stock_version: int = Field(ge=1)


# --- Scenario 6: buffered ingestion -------------------------------------------------------------


# Clicks accepted while the previous message awaited its confirm travel together (common/grouping.py).
MAX_CLICKS_PER_MESSAGE = 100


class Click(BaseModel):
    """One click, as `POST /track_click` took it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    user_id: int
    page: str = Field(min_length=1, max_length=512)
    session_id: str | None = Field(default=None, max_length=128)
    clicked_at: AwareDatetime = Field(default_factory=utc_now)


class ClicksTracked(Event):
    """One click when the service is idle, more under load: the clicks that arrived while the previous
    message was on its way. The message is counted once (its event id), so each of its clicks is."""

    event_type: Literal["ClicksTracked"] = "ClicksTracked"
    clicks: tuple[Click, ...] = Field(min_length=1, max_length=MAX_CLICKS_PER_MESSAGE)


ALL_EVENTS: tuple[type[Event], ...] = (
    UserRegistered,
    PaymentInitiated,
    PaymentCompleted,
    PaymentFailed,
    ProductUpdated,
    GenerateReportJob,
    OrderCreated,
    StockReserved,
    StockReservationFailed,
    StockReleased,
    OrderCancelled,
    PaymentRefunded,
    StockLevelSet,
    StockLevelChanged,
    ClicksTracked,
)

EVENTS_BY_TYPE: dict[str, type[Event]] = {event.type_name(): event for event in ALL_EVENTS}
