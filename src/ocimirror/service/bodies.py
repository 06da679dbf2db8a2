"""Request bodies of `ocimirror serve`: read within a size limit, checked, parsed.

A malformed body is refused before anything is copied: over 1 MB (413, however it is
sent), nested deeper than `MAX_DEPTH`, or with more than `max_entries` entries (413); a
body that is not the request's model names the field and the offset (400).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from .models import MAX_BODY, MirrorRequest

#: Entries one request may have unless `api.max_entries` says otherwise.
DEFAULT_MAX_ENTRIES = 1000
#: How deeply a request body's arrays and objects may nest (a request needs 3).
MAX_DEPTH = 64


class BodyError(Exception):
    """A request body that cannot be used: the HTTP status and a message naming why."""

    def __init__(self, status: int, message: str, detail: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


# -- bodies ---------------------------------------------------------------------------


async def read_body(request: web.Request, limit: int = MAX_BODY) -> bytes:
    """Read a whole request body of at most `limit` bytes (413 beyond).

    A Content-Length over the limit is refused before reading; otherwise the body is read
    piece by piece as it arrives (chunked or not) until its end, or until it is too long.
    """
    too_large = BodyError(413, "Request body must not be larger than 1MB")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    while True:
        # read(n) answers what has arrived (up to n bytes), b"" only at the body's end.
        piece = await request.content.read(limit + 1 - len(body))
        if not piece:
            return bytes(body)
        body += piece
        if len(body) > limit:
            raise too_large


#: A JSON string (skipped) or a bracket (counted) when measuring how deep a body nests.
_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _too_deep(text: str, start: int, limit: int = MAX_DEPTH) -> int | None:
    """Where the body first nests deeper than `limit` (a string index), else None."""
    if text.count("[", start) + text.count("{", start) <= limit:
        return None
    depth = 0
    for match in _NESTING.finditer(text, start):
        c = match.group()
        if c in "[{":
            depth += 1
            if depth > limit:
                return match.start()
        elif c in "]}":
            depth -= 1
            if depth <= 0:
                return None  # the value ended: what follows is ignored, as by Go's decoder
    return None


def parse_mirror_request(body: bytes, max_entries: int = DEFAULT_MAX_ENTRIES) -> MirrorRequest:
    """Parse and validate a mirror request; a BodyError says what is wrong and where."""
    if not body.strip():
        raise BodyError(400, "Request body must not be empty")
    try:
        text = body.decode()
    except UnicodeDecodeError as e:
        raise BodyError(
            400, f"Request body contains badly-formed JSON (at position {e.start + 1})"
        ) from None
    start = len(text) - len(text.lstrip(" \t\n\r"))
    deep = _too_deep(text, start)
    if deep is not None:
        raise BodyError(
            400,
            f"Request body contains JSON nested more than {MAX_DEPTH} deep"
            f" (at position {len(text[: deep + 1].encode())})",
        )
    try:
        # Like Go's Decoder.Decode: the first JSON value counts, anything after it is ignored.
        doc, _end = json.JSONDecoder().raw_decode(text, start)
    except RecursionError:  # a backstop: _too_deep refuses such bodies first
        raise BodyError(400, "Request body contains badly-formed JSON") from None
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip(" \t\n\r")):
            raise BodyError(400, "Request body contains badly-formed JSON") from None
        # Go counts the bytes read, the bad one included.
        at = len(text[: e.pos + 1].encode())
        raise BodyError(
            400, f"Request body contains badly-formed JSON (at position {at})"
        ) from None
    if not isinstance(doc, dict):
        where = start + 1 if isinstance(doc, list) else go_offset(text, ())
        raise BodyError(
            400, f'Request body contains an invalid value for the "" field (at position {where})'
        )
    entries = doc.get("mirrors")
    if isinstance(entries, list) and len(entries) > max_entries:
        raise BodyError(
            413,
            f"Request body has {len(entries)} mirrors entries: at most {max_entries} are"
            " accepted in one request (api.max_entries)",
        )
    try:
        return MirrorRequest.model_validate(doc)
    except ValidationError as e:
        detail = [
            {"field": _dotted(err["loc"]), "error": err["msg"], "type": err["type"]}
            for err in e.errors(include_url=False, include_input=False)
        ]
        first = e.errors()[0]
        loc = first["loc"]
        if first["type"] == "extra_forbidden":
            # Go's decoder names the unknown key alone, quoted.
            message = f'Request body contains unknown field "{loc[-1]}"'
        elif first["type"] == "missing":
            message = f'Request body is missing the "{_dotted(loc)}" field'
        else:
            # As Go's UnmarshalTypeError: the struct path without indexes, and the offset.
            field = ".".join(str(part) for part in loc if isinstance(part, str))
            offset = go_offset(body.decode(), loc)
            message = f'Request body contains an invalid value for the "{field}" field'
            if offset is not None:
                message += f" (at position {offset})"
        raise BodyError(400, message, detail) from None


def empty_object(body: bytes) -> None:
    """Check a body that carries nothing is a JSON object (its members are ignored)."""
    text = body.decode(errors="replace").strip(" \t\n\r")
    try:
        if _too_deep(text, 0) is None and isinstance(json.loads(text), dict):
            return
    except (json.JSONDecodeError, RecursionError):
        pass
    raise BodyError(400, "Request body must be a JSON object, such as {}")


def go_offset(text: str, loc: Sequence[int | str]) -> int | None:
    """Where Go's JSON decoder reports a type error at `loc`: after a scalar, inside `{`/`[`."""
    decoder = json.JSONDecoder()
    ws = " \t\n\r"

    def skip(i: int) -> int:
        while i < len(text) and text[i] in ws:
            i += 1
        return i

    def walk(i: int, path: Sequence[int | str]) -> int | None:
        i = skip(i)
        if not path:
            if i < len(text) and text[i] in "{[":
                return i + 1
            try:
                return decoder.raw_decode(text, i)[1]
            except json.JSONDecodeError:
                return None
        want, rest = path[0], path[1:]
        if i >= len(text) or text[i] not in "{[":
            return None
        closing = "}" if text[i] == "{" else "]"
        i, n = i + 1, 0
        while True:
            i = skip(i)
            if i >= len(text) or text[i] == closing:
                return None
            key: int | str = n
            if closing == "}":
                key, i = decoder.raw_decode(text, i)
                i = skip(i) + 1  # the colon
            if key == want:
                return walk(i, rest)
            i = decoder.raw_decode(text, skip(i))[1]
            i = skip(i)
            if i < len(text) and text[i] == ",":
                i += 1
            n += 1

    try:
        return walk(0, loc)
    except (json.JSONDecodeError, IndexError):
        return None


def _dotted(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
