"""JSON responses, and the shape of every error body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.responses import Response

ERROR = "error"


class JSONResponse(Response):
    """Starlette's JSONResponse, encoded with orjson; anything orjson can't encode is written as str()."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str, option=orjson.OPT_UTC_Z)


def error_response(status_code: int, details: list[Any], headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The error shape of the FastAPI + Celery service orderlane replaces: `{"status": "error", "details": [...]}`."""
    return JSONResponse({"status": ERROR, "details": details}, status_code=status_code, headers=headers)


def problem(error_type: str, message: str) -> dict[str, str]:
    """One entry of `details` for errors that are not pydantic's: a type to match on and a message to read."""
    return {"type": error_type, "msg": message}


def validation_error_response(exc: ValidationError) -> Response:
    """422 with pydantic's errors, serialized by pydantic itself: it encodes any input it reports, such as an
    integer beyond 64 bits, which a general JSON encoder may refuse."""
    details = exc.json(include_url=False)
    body = b'{"status":"' + ERROR.encode() + b'","details":' + details.encode() + b"}"
    return Response(body, status_code=422, media_type=JSONResponse.media_type)
