"""This machine's ceiling for one service: the click endpoint's request and answer, with nothing behind it.

The same request model (validation included) and the same answer as analyticsservice's
`POST /track_click`, served by the same uvicorn command, but no middleware, no metrics and no publish.
"""

from __future__ import annotations

from fastapi import FastAPI

from analyticsservice.api import ClickAccepted, ClickRequest

app = FastAPI(title="Bare click endpoint (make bench's ceiling)")


@app.post("/track_click")
async def track_click(click: ClickRequest) -> ClickAccepted:
    return ClickAccepted(status="tracked")
