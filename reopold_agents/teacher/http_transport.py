"""One bounded HTTP exchange of the served teacher (``teacher/http.py``): JSON out, JSON back.

Why not ``urllib.request.urlopen(timeout=...)``: its timeout bounds each socket wait, not the exchange,
so a server that trickles a byte per wait holds the caller indefinitely, and ``read()`` buffers a reply
of any size before anyone can look at it. Here an exchange has

* ``timeout_s``: to connect, and for each wait on a socket read (a server that goes silent);
* ``deadline_s``: for the whole exchange (connect, send, status line, headers, body). A watchdog timer
  shuts the socket down when it passes, which ends a read blocked anywhere, the TLS handshake and the
  header lines included, whatever the server keeps sending;
* ``max_reply_bytes``: counted while the body is read; a declared ``Content-Length`` over the cap is
  refused before the body is read, an undeclared one as soon as the count passes it.

Environment proxies (``http_proxy``) are not used: the teacher servers are addressed directly.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any

RETRY_STATUS = (408, 429)  # besides 5xx: the server is busy or gave up waiting, a resend may succeed
READ_CHUNK = 1 << 16  # bytes asked of one socket read
ERROR_BODY_BYTES = 1 << 16  # of an error reply: only its message is shown


@dataclass(frozen=True)
class Limits:
    """What one exchange may take (the ``model.teacher_*`` keys)."""

    timeout_s: float  # connect, and each wait on a socket read
    deadline_s: float  # the whole exchange
    max_reply_bytes: int  # the reply body


class ExchangeFailed(Exception):
    """The server's failure (connection, timeout, deadline, size, cut short, not JSON, 5xx/408/429): a
    resend may succeed."""


class ExchangeRefused(Exception):
    """The server refused the request (a 4xx other than 408/429, a redirect): a resend gets the same answer."""


def exchange_json(url: str, body: dict[str, Any] | None, limits: Limits) -> Any:
    """GET (``body`` None) or POST JSON to ``url``; the decoded JSON reply of a 2xx answer, within ``limits``.
    Raises ExchangeFailed or ExchangeRefused saying what happened (without the URL: the caller adds it)."""
    parts = urllib.parse.urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.netloc, timeout=min(limits.timeout_s, limits.deadline_s))
    watchdog = _Watchdog(conn, limits.deadline_s)
    connected = False
    try:
        conn.connect()
        connected = True
        watchdog.check()  # passed while connecting, before the socket could be shut
        data = None if body is None else json.dumps(body).encode()
        conn.request("GET" if body is None else "POST", target, body=data,
                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        resp = conn.getresponse()
        if not 200 <= resp.status < 300:
            detail = _error_detail(_read_prefix(resp, ERROR_BODY_BYTES))
            watchdog.check()
            if resp.status >= 500 or resp.status in RETRY_STATUS:
                raise ExchangeFailed(f"HTTP {resp.status}: {detail}")
            hint = " (redirects are not followed: name the server itself)" if 300 <= resp.status < 400 else ""
            raise ExchangeRefused(f"HTTP {resp.status}: {detail}{hint}")
        raw = _read_body(resp, limits.max_reply_bytes)
        watchdog.check()  # a close-delimited body ends "normally" when the watchdog shuts the socket
    except ExchangeRefused:
        raise
    except ExchangeFailed as exc:
        raise watchdog.error() or exc from None
    except TimeoutError:
        raise watchdog.error() or ExchangeFailed(
            f"no answer within {limits.timeout_s:g} s (model.teacher_timeout_s)") from None
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        what = "connection broke" if connected else "cannot connect"
        raise watchdog.error() or ExchangeFailed(f"{what} ({type(exc).__name__}: {exc})") from None
    finally:
        watchdog.stop()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise ExchangeFailed(f"reply is not JSON ({len(raw)} bytes: {raw[:80]!r})") from None


class _Watchdog:
    """Shuts the exchange's socket down once ``deadline_s`` has passed, so that any blocked read returns."""

    def __init__(self, conn: http.client.HTTPConnection, deadline_s: float) -> None:
        self._conn, self.deadline_s = conn, deadline_s
        self._lock = threading.Lock()  # the shutdown and the final close never overlap (no reused fd is hit)
        self._done = False
        self.fired = False
        self._timer = threading.Timer(deadline_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            sock = self._conn.sock
            if sock is not None:
                try:  # the plain socket's shutdown, also under TLS: SSLSocket.shutdown would drop its state mid-read
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def error(self) -> ExchangeFailed | None:
        """The deadline's failure if it passed (whatever else the interrupted read raised), else None."""
        if not self.fired:
            return None
        return ExchangeFailed(f"no complete reply within the {self.deadline_s:g} s deadline (model.teacher_deadline_s)")

    def check(self) -> None:
        err = self.error()
        if err is not None:
            raise err

    def stop(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._done = True
            self._conn.close()


def _content_length(resp: http.client.HTTPResponse) -> int | None:
    value = resp.getheader("Content-Length")
    try:
        return int(value) if value is not None and not resp.chunked else None
    except ValueError:
        return None


def _read_body(resp: http.client.HTTPResponse, cap: int) -> bytes:
    """The whole body, refused as soon as it is known to exceed ``cap`` bytes; one socket read per chunk
    (``read1``), so the deadline and the cap are looked at between reads."""
    declared = _content_length(resp)
    mib = f"{cap / 2**20:g} MiB cap (model.teacher_max_reply_mb)"
    if declared is not None and declared > cap:
        raise ExchangeFailed(f"reply of {declared} bytes (its Content-Length) is over the {mib}; not read")
    buf = bytearray()
    while chunk := resp.read1(READ_CHUNK):
        buf += chunk
        if len(buf) > cap:
            raise ExchangeFailed(f"reply is over the {mib}: refused after reading {len(buf)} bytes")
    if declared is not None and len(buf) < declared:
        raise ExchangeFailed(f"reply cut short: {len(buf)} of {declared} bytes")
    return bytes(buf)


def _read_prefix(resp: http.client.HTTPResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of an error reply (the rest is never read)."""
    buf = bytearray()
    while len(buf) < limit and (chunk := resp.read1(min(READ_CHUNK, limit - len(buf)))):
        buf += chunk
    return bytes(buf)


def _error_detail(raw: bytes) -> str:
    """The server's error message (vLLM: ``{"error": {"message": ...}}`` or ``{"message": ...}``), short."""
    try:
        data = json.loads(raw)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:500]
    except (ValueError, RecursionError):
        return raw[:300].decode(errors="replace")
