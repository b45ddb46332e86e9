"""Configuration shared by every service: the one place environment variables are read.

Each service subclasses `ServiceSettings`, fixes its `service_name`, and adds what only it needs.
Defaults are the design document's values, so a bare `make run` behaves as documented, and
every simulated delay can be shrunk from the environment for tests and demos.
"""

from __future__ import annotations

import os
import socket
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.addresses import FleetMode, default_port

Seconds = Annotated[float, Field(ge=0)]
PositiveSeconds = Annotated[float, Field(gt=0)]


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", frozen=True)

    service_name: str = "service"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # How a service reaches the next one: `async` through RabbitMQ (the outbox, consumers), `sync` by an
    # HTTP call it waits for (no broker at all; see common/calls.py). The business logic is the same.
    fleet_mode: FleetMode = "async"

    # --- infrastructure ---------------------------------------------------------------------
    # The vhost is part of the URL, so one broker can host the dev fleet and isolated test runs.
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/fleet"
    # Other nodes of the same cluster, tried in turn after RABBITMQ_URL (comma-separated URLs, each with
    # the vhost): a connection that is lost, or not made again within a reconnect interval, moves on.
    rabbitmq_failover_urls: str = ""
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/fleet"

    # Ten services share one PostgreSQL (max_connections=100 by default): 10 x 6 = 60 at most, which
    # leaves room for replicas, psql and the test harness. No overflow by default: overflow connections
    # are opened and closed per burst, which costs far more than waiting a millisecond for a pooled one.
    db_pool_size: Annotated[int, Field(ge=1, le=50)] = 6
    db_max_overflow: Annotated[int, Field(ge=0, le=50)] = 0
    db_pool_timeout_s: PositiveSeconds = 5.0
    db_statement_timeout_s: PositiveSeconds = 10.0

    # --- messaging ----------------------------------------------------------------------------
    # Prefetch bounds both unacknowledged deliveries and concurrent handlers per consumer.
    prefetch_count: Annotated[int, Field(ge=1, le=1000)] = 20
    # A failing handler runs at most this many times before its message is dead-lettered.
    max_delivery_attempts: Annotated[int, Field(ge=1, le=50)] = 5
    retry_base_delay_s: PositiveSeconds = 0.5
    retry_backoff_factor: Annotated[float, Field(ge=1)] = 4.0
    retry_max_delay_s: PositiveSeconds = 60.0
    # Redelivery while a dependency (the database) is down does not use up an attempt.
    dependency_retry_delay_s: PositiveSeconds = 1.0
    publish_timeout_s: PositiveSeconds = 5.0
    broker_reconnect_interval_s: PositiveSeconds = 1.0
    broker_connect_timeout_s: PositiveSeconds = 60.0
    # A broker that takes the socket but never answers (one out of file handles does exactly that) costs
    # a retry, not a start that hangs for ever; RabbitMQ gives up on an unfinished handshake after 10 s.
    broker_handshake_timeout_s: PositiveSeconds = 10.0
    shutdown_grace_s: PositiveSeconds = 10.0

    # --- synchronous fleet: calls between services -------------------------------------------
    # Where service `{service}` answers on `{port}`: 127.0.0.1 for the local runner, the service's DNS
    # name in compose (`http://{service}:{port}`).
    service_url_template: str = "http://127.0.0.1:{port}"
    # Ports other than the mode's defaults (common/addresses.py), by service, as JSON: `{"emailservice": 9007}`.
    service_ports: dict[str, int] = Field(default_factory=dict)
    # The longest a request waits for the whole chain of calls it starts (a report's CPU work included);
    # every call downstream gets what is left of it, so the caller always answers first.
    call_timeout_s: PositiveSeconds = 60.0

    # --- transactional outbox -----------------------------------------------------------------
    # A row belongs to its writer's dispatcher for this long after its insert (claims must outlive the
    # publish timeout); after that, or once given back, the relay publishes it (crash, broker outage).
    outbox_dispatch_claim_s: PositiveSeconds = 10.0
    # Rows waiting in memory for the dispatcher, at most; beyond that new rows go to the relay.
    outbox_dispatch_queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    outbox_relay_interval_s: PositiveSeconds = 1.0
    outbox_relay_batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    # How often the relay refreshes the backlog gauges (a count over the outbox table).
    outbox_backlog_interval_s: PositiveSeconds = 5.0

    # --- idempotency records ------------------------------------------------------------------
    # Processed-event ids are kept this long, far beyond any redelivery or retry delay, then pruned
    # so the table does not grow without bound at click volumes.
    processed_events_retention_s: Annotated[float, Field(ge=3600)] = 7 * 24 * 3600.0
    processed_events_prune_interval_s: PositiveSeconds = 3600.0

    # --- simulated work (design document defaults) ---------------------------------------------
    email_send_delay_s: Seconds = 0.5
    payment_delay_s: Seconds = 2.0
    report_cpu_seconds: Seconds = 10.0

    @model_validator(mode="after")
    def _claims_outlive_publishing(self) -> ServiceSettings:
        # The dispatcher starts a publish only while its claim has publish_timeout_s + 1 s left.
        if self.outbox_dispatch_claim_s <= self.publish_timeout_s + 1.0:
            raise ValueError("OUTBOX_DISPATCH_CLAIM_S must exceed PUBLISH_TIMEOUT_S by more than a second")
        return self

    @property
    def instance_name(self) -> str:
        """This process among the service's replicas: `service@host:pid`."""
        return f"{self.service_name}@{socket.gethostname()}:{os.getpid()}"

    def service_url(self, service: str) -> str:
        """The base URL of `service` in this fleet (the synchronous fleet's calls go there)."""
        port = self.service_ports.get(service) or default_port(service, self.fleet_mode)
        return self.service_url_template.format(service=service, port=port).rstrip("/")

    @property
    def rabbitmq_urls(self) -> list[str]:
        """Every broker address, RABBITMQ_URL first."""
        others = (url.strip() for url in self.rabbitmq_failover_urls.split(","))
        return [self.rabbitmq_url, *(url for url in others if url)]

    @field_validator("database_url")
    @classmethod
    def _use_asyncpg_driver(cls, url: str) -> str:
        # Accept the plain URL people copy from psql docs; the services always talk asyncpg.
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url.removeprefix(prefix)
        return url
