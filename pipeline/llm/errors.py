"""What a request to a model endpoint can end in, other than a completion.

Our own small hierarchy (the openai SDK's classes cost its import: ~0.45 s and ~29 MB in every
converter process, for a client that no longer sends through it). Each error names the URL it
concerns; `is_retryable` and `retry_after_seconds` read them.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any


class RequestError(Exception):
    """A request to `url` that produced no completion."""

    def __init__(self, message: str, url: str = ""):
        super().__init__(message)
        self.url = url


class ConnectionCut(RequestError):
    """Refused, dropped, answered with bytes that are not HTTP, or a stream that ended unfinished
    or garbled: the response is lost (retried)."""


class IdleTimeout(RequestError):
    """Nothing arrived for the endpoint's `idle_timeout_s` (connecting, or waiting for the headers
    or the next bytes of the body); retried."""


class StatusError(RequestError):
    """The server answered with a non-2xx status (`body`: the parsed JSON error, or its text)."""

    def __init__(self, status_code: int, headers: dict[str, str], body: Any, url: str = ""):
        super().__init__(f"HTTP {status_code}: {str(body)[:300]}", url)
        self.status_code = status_code
        self.headers = headers  # lower-case names
        self.body = body


class StreamError(RequestError):
    """An error event inside a stream the server had accepted (HTTP 200 already sent)."""

    def __init__(self, message: str, body: Any, status_code: int | None, url: str = ""):
        super().__init__(message, url)
        self.body = body
        self.status_code = status_code


_RETRY_STATUSES = (408, 409, 429)


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionCut, IdleTimeout)):
        return True
    if isinstance(exc, StatusError):
        return exc.status_code >= 500 or exc.status_code in _RETRY_STATUSES
    if isinstance(exc, StreamError):
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code in _RETRY_STATUSES
    return False


def retry_after_seconds(exc: BaseException) -> float | None:
    """How long the server asked us to wait (Retry-After-Ms, Retry-After seconds or HTTP date)."""
    headers = getattr(exc, "headers", None)
    if not headers:
        return None
    if ms := headers.get("retry-after-ms"):
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None
