"""``model.teacher_url``: the served teacher's base URLs, parsed once for the config check and the client.

In the config package (not ``teacher/http.py``) so that checking a config imports no behaviour.
"""

from __future__ import annotations

import urllib.parse


def parse_teacher_urls(value: str) -> list[str]:
    """One or more comma-separated server base URLs (``http://host:port``; a trailing ``/`` or ``/v1`` as
    in OpenAI client base URLs is dropped). Raises ValueError saying why."""
    urls = []
    for part in value.split(","):
        url = part.strip().rstrip("/")
        url = url[: -len("/v1")] if url.endswith("/v1") else url
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{part.strip()!r} is not an http(s)://host:port URL")
        urls.append(url)
    return urls
