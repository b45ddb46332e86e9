from datetime import datetime

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, ConfigDict, EmailStr, Field
from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert

from common.events import UserRegistered
from common.inputs import DatabaseId
from common.service import CALL_FAILED_RESPONSES, UNAVAILABLE_RESPONSE, ErrorResponse, RuntimeDep
from common.sql import Statement
from userservice.tables import users

router = APIRouter(tags=["users"])

REGISTER = Statement(
    insert(users)
    .values(email=bindparam("email"))
    .on_conflict_do_nothing(index_elements=["email"])
    .returning(users.c.id)
)
READ_USER = Statement(select(users).where(users.c.id == bindparam("user_id")))


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr = Field(examples=["user@example.com"])


class RegisterResponse(BaseModel):
    id: int = Field(examples=[123])
    email: str = Field(examples=["user@example.com"])
    message: str = Field(examples=["User registered successfully. Welcome email will be sent shortly."])
    event_published: bool = Field(
        description="True once `UserRegistered` is committed to the outbox together with the user: "
        "it will reach the email service even if the broker or the email service is down right now.",
        examples=[True],
    )


class User(BaseModel):
    id: int = Field(examples=[123])
    email: str = Field(examples=["user@example.com"])
    created_at: datetime


@router.post(
    "/register",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Register a user; the welcome email is sent in the background",
    responses={
        201: {
            "model": RegisterResponse,
            "description": "Synchronous fleet: registered, and the welcome email recorded by the email service.",
        },
        409: {"model": ErrorResponse, "description": "The email is already registered."},
        **UNAVAILABLE_RESPONSE,
        **CALL_FAILED_RESPONSES,
    },
)
async def register(request: RegisterRequest, response: Response, runtime: RuntimeDep) -> RegisterResponse:
    email = request.email.lower()
    async with runtime.outbox.transaction() as unit:
        user_id = await unit.connection.fetchval(REGISTER, email=email)
        if user_id is None:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"{email} is already registered")
        unit.publish(UserRegistered(user_id=user_id, email=email))
    if runtime.synchronous:
        response.status_code = status.HTTP_201_CREATED
        return RegisterResponse(
            id=user_id, email=email, message="User registered; welcome email sent.", event_published=True
        )
    return RegisterResponse(
        id=user_id,
        email=email,
        message="User registered successfully. Welcome email will be sent shortly.",
        event_published=True,
    )


@router.get(
    "/users/{user_id}",
    summary="Read a registered user",
    responses={404: {"model": ErrorResponse, "description": "No such user."}, **UNAVAILABLE_RESPONSE},
)
async def read_user(user_id: DatabaseId, runtime: RuntimeDep) -> User:
    row = await runtime.database.fetchrow(READ_USER, user_id=user_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"user {user_id} not found")
    return User.model_validate(dict(row))
