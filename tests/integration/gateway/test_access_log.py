"""Sandbox tokens never reach the gateway's log: before, uvicorn's access lines carried every
`?token=` of noVNC and Jupyter links in plain text (gateway/access_log.py)."""

from __future__ import annotations

import time

import httpx
from harness import Cluster


def test_tokens_in_query_strings_are_redacted_in_access_lines(api: httpx.Client, stack: Cluster) -> None:
    secret = "s3cr3t-token-value-0123456789"
    for path in (f"/v1/sandboxes/sbx-none/vnc/?token={secret}", f"/v1/sandboxes/sbx-none/jupyter/lab?x=1&token={secret}"):
        api.get(path)
    log_path = stack.services["gateway"].log_path
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if text.count("token=REDACTED") >= 2:
            break
        time.sleep(0.1)
    assert secret not in text
    assert "/v1/sandboxes/sbx-none/vnc/?token=REDACTED" in text, text[-2000:]
