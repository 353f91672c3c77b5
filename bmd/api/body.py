"""Request bodies: one bounded JSON reader and the registry of which pydantic model each route takes.

``loads_bounded`` never raises anything but :class:`InvalidInput`: bodies nested deeper than
``MAX_DEPTH`` (refused before the recursive parser runs, so no RecursionError), number literals longer than
``MAX_NUMBER_LEN`` characters (no 4300-digit integers), NaN/Infinity and floats that overflow to infinity,
text that is not UTF-8, lone surrogates and NUL characters (the database cannot store them) are all
400s naming ``body``. Bodies over ``MAX_BODY_BYTES`` (the app's ``client_max_size``) are 413.

Registering a route's body: decorate its handler with ``@takes(Model)`` (``@takes(None)`` for a body-taking
method that reads none) and call ``parse_body(request, Model)`` inside. The fuzz test reads ``body_model``
from every POST/PUT/PATCH handler and fails for a route that has none; the OpenAPI spec (bmd/api/openapi.py)
takes its request schemas from the same models.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable
from itertools import accumulate
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from bmd.errors import InvalidInput, PayloadTooLarge

MAX_BODY_BYTES = 1024**2
MAX_DEPTH = 32
MAX_NUMBER_LEN = 64
THREAD_PARSE_BYTES = 64 * 1024
BODY_MODEL_ATTR = "body_model"
BODY_REQUIRED_ATTR = "body_required"

H = TypeVar("H", bound=Callable[[web.Request], Awaitable[web.StreamResponse]])

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = {"[": 1, "{": 1, "]": -1, "}": -1}


def takes(model: type[BaseModel] | None, *, required: bool = True) -> Callable[[H], H]:
    """Declare the body model a handler parses (None: it takes no body; ``required=False``: a call without
    a body is valid too); the fuzz test builds bodies from it, the OpenAPI spec describes it."""

    def mark(handler: H) -> H:
        setattr(handler, BODY_MODEL_ATTR, model)
        setattr(handler, BODY_REQUIRED_ATTR, required)
        return handler

    return mark


def body_model_of(handler: Any) -> type[BaseModel] | None:
    """The model ``@takes`` registered on ``handler``; raises AttributeError when it was never registered."""
    model: type[BaseModel] | None = getattr(handler, BODY_MODEL_ATTR)
    return model


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in ``text``, brackets inside strings not counted. Never recurses."""
    skeleton = _STRING.sub("", text)
    opened = skeleton.count("[") + skeleton.count("{")
    if opened <= 1:
        return opened
    return max(accumulate(_BRACKETS[c] for c in skeleton if c in _BRACKETS), default=0)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_int(literal: str) -> int:
    if len(literal) > MAX_NUMBER_LEN:
        raise ValueError(f"a number literal is longer than {MAX_NUMBER_LEN} characters")
    return int(literal)


def _parse_float(literal: str) -> float:
    if len(literal) > MAX_NUMBER_LEN:
        raise ValueError(f"a number literal is longer than {MAX_NUMBER_LEN} characters")
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"{literal} is out of range for a finite number")
    return value


def loads_bounded(raw: bytes) -> Any:
    """Parse a JSON document with the bounds above; any problem is InvalidInput(field="body")."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidInput(f"request body is not UTF-8: {err.reason} at byte {err.start}", field="body") from err
    if nesting_depth(text) > MAX_DEPTH:
        raise InvalidInput(f"request body nests deeper than {MAX_DEPTH} levels", field="body")
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_int=_parse_int, parse_float=_parse_float)
        # a round trip finds what json.loads lets through but no database can store
        canonical = json.dumps(data, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except RecursionError as err:  # unreachable after the depth check; kept so it can never be a 500
        raise InvalidInput(f"request body nests deeper than {MAX_DEPTH} levels", field="body") from err
    except UnicodeEncodeError as err:
        raise InvalidInput("request body holds a lone UTF-16 surrogate (\\ud800-\\udfff)", field="body") from err
    except ValueError as err:  # JSONDecodeError, and our hooks' refusals
        raise InvalidInput(f"request body is not valid JSON: {err}", field="body") from err
    if b"\\u0000" in canonical:
        raise InvalidInput("request body holds a NUL character (\\u0000)", field="body")
    return data


async def read_json(request: web.Request) -> Any:
    """The request's JSON body, within ``MAX_BODY_BYTES`` (413) and the bounds of ``loads_bounded``."""
    if not request.body_exists:  # not can_read_body: the owner forwarding finds a lookup's node in it first
        raise InvalidInput("request body is required (JSON object)", field="body")
    limit = MAX_BODY_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is {request.content_length} bytes; the limit is {limit}")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes") from err
    if len(raw) > THREAD_PARSE_BYTES:  # ~0.2 s for a hostile megabyte: not on the event loop
        return await asyncio.to_thread(loads_bounded, raw)
    return loads_bounded(raw)
