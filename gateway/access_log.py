"""uvicorn's access log without credentials: `?token=` values (sandbox tokens in noVNC and
Jupyter links, or an API key given there) and anything shaped like an API key (crl_...) are
replaced by `REDACTED` before a line is written."""

from __future__ import annotations

import logging
import re

# token=..., access_token=..., key=... up to the next & or # (query values are URL-encoded).
SECRET_QUERY = re.compile(r"(?P<name>(?:^|[?&;])(?:token|access_token|api_key|key)=)[^&#\s]*", re.IGNORECASE)
API_KEY = re.compile(r"crl_[A-Za-z0-9_-]+")


def redact(path: str) -> str:
    return API_KEY.sub("crl_REDACTED", SECRET_QUERY.sub(r"\g<name>REDACTED", path))


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn.access: args = (client, method, path with query, http version, status).
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            record.args = (*record.args[:2], redact(record.args[2]), *record.args[3:])
        return True


def install() -> None:
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
