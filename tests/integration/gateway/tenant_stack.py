"""A stack with API keys required (CORRAL_AUTH=keys), and the keys the tenant tests use.

A module of its own (not conftest) so test files can import it by a name no other folder uses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import httpx
from harness import REPO, Cluster


@dataclass(frozen=True)
class Key:
    key_id: str
    tenant_id: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


def corral_cli(cluster: Cluster, *args: str, key: str = "") -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, "CORRAL_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "corral.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def first_admin_key(cluster: Cluster) -> Key:
    """The documented bootstrap: `corral keys create --admin --database` where the scheduler runs."""
    done = corral_cli(cluster, "keys", "create", "--admin", "--name", "admin", "--database", "--json")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    return Key(created["key_id"], created["tenant_id"], created["key"])


def create_key(api: httpx.Client, admin: Key, name: str) -> Key:
    reply = api.post("/v1/keys", json={"name": name}, headers=admin.headers)
    assert reply.status_code == 201, reply.text
    body = reply.json()
    return Key(body["key_id"], body["tenant_id"], body["key"])
