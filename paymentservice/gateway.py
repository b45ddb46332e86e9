"""The simulated payment gateway's answer: deterministic, so a redelivered payment gets the same one."""

from __future__ import annotations

import hashlib
import secrets

from common.events import PaymentBehaviour

DECLINED = "payment_declined"


def stable_fraction(key: str) -> float:
    """A number in [0, 1) that depends only on `key`."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def approves(key: str, behaviour: PaymentBehaviour | None, failure_rate: float) -> bool:
    """Whether the gateway takes the money: the per-payment override if given, else the policy
    `failure_rate` (0 = always approve, 1 = always decline) applied to `key`."""
    if behaviour == "succeed":
        return True
    if behaviour == "fail":
        return False
    return stable_fraction(key) >= failure_rate


def order_key(order_id: int) -> str:
    return f"order:{order_id}"


def new_payment_id() -> str:
    return f"pay_{secrets.token_hex(12)}"


def new_transaction_id() -> str:
    return f"txn_{secrets.token_hex(12)}"


def new_refund_id() -> str:
    return f"ref_{secrets.token_hex(12)}"
