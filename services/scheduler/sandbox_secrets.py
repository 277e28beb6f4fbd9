"""What the scheduler keeps about a long-lived sandbox and shows no client: the SHA-256 of its
two access tokens and the executor-host directory of its unix sockets.

The public record (corral.v1.Sandbox, SandboxRow) carries neither; the gateway asks
SandboxAccessService (sandbox_access.py), which checks a presented token here.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from sqlalchemy import String, Text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from corral.internal.v1 import sandbox_access_pb2

from .store import Base


class SandboxSecretsRow(Base):
    __tablename__ = "scheduler_sandbox_secrets"

    sandbox_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64))
    view_token_sha256: Mapped[str] = mapped_column(String(64))
    host_run_dir: Mapped[str] = mapped_column(Text)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _matches(token: str, expected_sha256: str) -> bool:
    return bool(token and expected_sha256) and hmac.compare_digest(hash_token(token), expected_sha256)


@dataclass(frozen=True)
class SandboxSecrets:
    token_sha256: str
    view_token_sha256: str
    host_run_dir: str

    @classmethod
    def for_tokens(cls, token: str, view_token: str, host_run_dir: str) -> SandboxSecrets:
        return cls(hash_token(token), hash_token(view_token), host_run_dir)

    def row(self, sandbox_id: str) -> SandboxSecretsRow:
        return SandboxSecretsRow(
            sandbox_id=sandbox_id,
            token_sha256=self.token_sha256,
            view_token_sha256=self.view_token_sha256,
            host_run_dir=self.host_run_dir,
        )

    def access(self, token: str) -> sandbox_access_pb2.SandboxAccess.ValueType:
        """What `token` opens; both hashes are compared, in constant time."""
        full = _matches(token, self.token_sha256)
        view = _matches(token, self.view_token_sha256)
        if full:
            return sandbox_access_pb2.SANDBOX_ACCESS_FULL
        if view:
            return sandbox_access_pb2.SANDBOX_ACCESS_VIEW
        return sandbox_access_pb2.SANDBOX_ACCESS_NONE


class SandboxSecretsStore:
    """Reads the rows; SandboxStore.put writes them with the sandbox's first record."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def get(self, sandbox_id: str) -> SandboxSecrets | None:
        async with self._sessions() as session:
            row = await session.get(SandboxSecretsRow, sandbox_id)
            if row is None:
                return None
            return SandboxSecrets(row.token_sha256, row.view_token_sha256, row.host_run_dir)
