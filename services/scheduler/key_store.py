"""The scheduler's API keys: one row per key, holding its SHA-256, never the key."""

from __future__ import annotations

import asyncio
import time

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Boolean, Double, String, Text, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from corral.api_keys import hash_key, new_key, new_key_id
from corral.errors import InvalidArgument, NotFound
from corral.v1 import keys_pb2

from .store import Base

NAME_MAX = 128


class KeyRow(Base):
    __tablename__ = "scheduler_api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    name: Mapped[str] = mapped_column(Text)
    tenant_id: Mapped[str] = mapped_column(Text, index=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double, nullable=True)


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def to_proto(row: KeyRow) -> keys_pb2.ApiKey:
    key = keys_pb2.ApiKey(
        key_id=row.key_id, name=row.name, tenant_id=row.tenant_id, admin=row.admin,
        created_at=_timestamp(row.created_at),
    )
    if row.revoked_at is not None:
        key.revoked_at.CopyFrom(_timestamp(row.revoked_at))
    return key


def _checked(value: str, field: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > NAME_MAX or not value.isprintable():
        raise InvalidArgument(f"{field} must be at most {NAME_MAX} printable characters")
    return value


class KeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._lock = asyncio.Lock()  # one writer at a time (SQLite)

    async def create_tables(self) -> None:
        async with self._engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all, tables=[Base.metadata.tables[KeyRow.__tablename__]])

    async def create(self, name: str, tenant_id: str, admin: bool) -> tuple[keys_pb2.ApiKey, str]:
        """A new key: its record and the key itself (returned once, stored only hashed)."""
        name = _checked(name, "name")
        tenant_id = _checked(tenant_id or name, "tenant_id")
        secret = new_key()
        row = KeyRow(
            key_id=new_key_id(), key_sha256=hash_key(secret), name=name, tenant_id=tenant_id,
            admin=admin, created_at=time.time(), revoked_at=None,
        )
        async with self._lock, self._sessions.begin() as session:
            session.add(row)
        return to_proto(row), secret

    async def lookup(self, secret: str) -> keys_pb2.ApiKey | None:
        """The active key whose hash matches `secret` (None: unknown or revoked)."""
        async with self._sessions() as session:
            row = await session.scalar(select(KeyRow).where(KeyRow.key_sha256 == hash_key(secret)))
        if row is None or row.revoked_at is not None:
            return None
        return to_proto(row)

    async def all(self, include_revoked: bool) -> list[keys_pb2.ApiKey]:
        query = select(KeyRow).order_by(KeyRow.created_at)
        if not include_revoked:
            query = query.where(KeyRow.revoked_at.is_(None))
        async with self._sessions() as session:
            return [to_proto(row) for row in (await session.scalars(query)).all()]

    async def revoke(self, key_id: str) -> keys_pb2.ApiKey:
        async with self._lock, self._sessions.begin() as session:
            await session.execute(
                update(KeyRow).where(KeyRow.key_id == key_id, KeyRow.revoked_at.is_(None)).values(revoked_at=time.time())
            )
            row = await session.get(KeyRow, key_id)
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}")
            return to_proto(row)
