import functools
from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import bindparam, select

from common.inputs import MAX_DATABASE_INT, PlainInt
from common.service import UNAVAILABLE_RESPONSE, RuntimeDep
from common.sql import Statement
from emailservice.tables import sent_emails

router = APIRouter(tags=["emails"])

MAX_PAGE = 500


@functools.cache
def emails_query(for_one_user: bool) -> Statement:
    query = select(sent_emails).order_by(sent_emails.c.id.desc()).limit(bindparam("limit"))
    if for_one_user:
        query = query.where(sent_emails.c.user_id == bindparam("user_id"))
    return Statement(query)


class SentEmail(BaseModel):
    id: int
    user_id: int = Field(examples=[123])
    recipient: str = Field(examples=["user@example.com"])
    subject: str = Field(examples=["Welcome aboard!"])
    sent_at: datetime


@router.get("/emails", summary="Emails sent, newest first (optionally to one user)", responses=UNAVAILABLE_RESPONSE)
async def list_emails(
    runtime: RuntimeDep,
    user_id: PlainInt | None = Query(
        default=None, ge=1, le=MAX_DATABASE_INT, description="Only emails sent to this user."
    ),
    limit: PlainInt = Query(default=100, ge=1, le=MAX_PAGE),
) -> list[SentEmail]:
    if user_id is None:
        rows = await runtime.database.fetch(emails_query(for_one_user=False), limit=limit)
    else:
        rows = await runtime.database.fetch(emails_query(for_one_user=True), limit=limit, user_id=user_id)
    return [SentEmail.model_validate(dict(row)) for row in rows]
