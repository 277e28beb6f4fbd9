"""Idempotency keys, the scheduler's side: one row per (tenant, key), unique in the database,
so two concurrent retries cannot both create.

A task's key row is written in the task's own transaction (TaskStore.create), so a stored key
always names a stored task. A sandbox is made by an executor call that no transaction can
span: its key is claimed first (a row with no resource yet), filled in once the sandbox is
recorded, and released if the creation fails; a concurrent retry waits for the claim to
settle. Keys live `idempotency_key_hours`, then the retention sweep removes them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from google.protobuf.message import Message
from sqlalchemy import Double, String, Text, and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from corral.errors import IdempotencyKeyReused
from corral.idempotency import check_key, request_fingerprint

from .store import Base

# How often a retry checks on a claim another request is still carrying out.
CLAIM_POLL_SECONDS = 0.1


class IdempotencyRow(Base):
    __tablename__ = "scheduler_idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # SubmitTask or CreateSandbox: a key names one request of one kind.
    operation: Mapped[str] = mapped_column(String(32))
    request_sha256: Mapped[str] = mapped_column(String(64))
    # The task or sandbox it created; "" while a sandbox is still being created.
    resource_id: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Double, index=True)


@dataclass(frozen=True)
class Claim:
    """A request carrying an idempotency key."""

    tenant_id: str
    key: str
    operation: str
    request_sha256: str

    @classmethod
    def of(cls, tenant_id: str, key: str, operation: str, request: Message) -> Claim:
        return cls(tenant_id, check_key(key), operation, request_fingerprint(operation, request))

    def row(self, resource_id: str) -> IdempotencyRow:
        return IdempotencyRow(
            tenant_id=self.tenant_id,
            key=self.key,
            operation=self.operation,
            request_sha256=self.request_sha256,
            resource_id=resource_id,
            created_at=time.time(),
        )


async def forget_expired(session: AsyncSession, claim: Claim, lifetime: float, stale_claim: float = 0.0) -> None:
    """Removes the claim's key when its lifetime is over (and, with `stale_claim`, when its
    creation was left unfinished that long, e.g. by a scheduler that died meanwhile)."""
    now = time.time()
    expired = IdempotencyRow.created_at < now - lifetime
    if stale_claim:
        expired = or_(expired, and_(IdempotencyRow.resource_id == "", IdempotencyRow.created_at < now - stale_claim))
    await session.execute(
        delete(IdempotencyRow).where(
            IdempotencyRow.tenant_id == claim.tenant_id, IdempotencyRow.key == claim.key, expired
        )
    )


class IdempotencyKeys:
    def __init__(self, engine: AsyncEngine, lifetime_seconds: float) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.lifetime = lifetime_seconds

    async def earlier(self, claim: Claim) -> str | None:
        """The id the key's earlier request created ("" while it is still being created), or
        None when the key is new (or expired). IdempotencyKeyReused when it was used for a
        different request."""
        async with self._sessions() as session:
            row = await session.get(IdempotencyRow, (claim.tenant_id, claim.key))
        if row is None or row.created_at < time.time() - self.lifetime:
            return None
        if row.operation != claim.operation or row.request_sha256 != claim.request_sha256:
            raise IdempotencyKeyReused(
                f"idempotency key {claim.key!r} was already used for a different request "
                f"({row.operation}) in the last {self.lifetime / 3600:g} hours; a new request needs a new key"
            )
        return row.resource_id

    async def acquire(self, claim: Claim, wait_seconds: float, stale_seconds: float) -> str | None:
        """Claims the key for this request (None: go on and create), or answers the id the
        earlier request with this key created, waiting up to `wait_seconds` for one still in
        progress."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                async with self._sessions.begin() as session:
                    await forget_expired(session, claim, self.lifetime, stale_seconds)
                    session.add(claim.row(""))
                return None
            except IntegrityError:
                pass  # held by an earlier (or a concurrent) request
            found = await self.earlier(claim)
            if found:
                return found
            if time.monotonic() > deadline:
                raise IdempotencyKeyReused(
                    f"a request with idempotency key {claim.key!r} is still in progress; retry it later"
                )
            await asyncio.sleep(CLAIM_POLL_SECONDS)

    async def fulfil(self, claim: Claim, resource_id: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(IdempotencyRow)
                .where(IdempotencyRow.tenant_id == claim.tenant_id, IdempotencyRow.key == claim.key)
                .values(resource_id=resource_id)
            )

    async def release(self, claim: Claim) -> None:
        """The request failed: a retry with the key may try again."""
        async with self._sessions.begin() as session:
            await session.execute(
                delete(IdempotencyRow).where(
                    IdempotencyRow.tenant_id == claim.tenant_id,
                    IdempotencyRow.key == claim.key,
                    IdempotencyRow.resource_id == "",
                )
            )

    async def sweep(self, now: float) -> int:
        """Removes the keys whose lifetime is over; how many."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                delete(IdempotencyRow).where(IdempotencyRow.created_at < now - self.lifetime)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    async def count(self) -> int:
        async with self._sessions() as session:
            return len((await session.scalars(select(IdempotencyRow.key))).all())
