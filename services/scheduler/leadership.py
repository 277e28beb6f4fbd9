"""Which scheduler replica leads: a lease row in PostgreSQL, renewed, fenced by epoch.

Replicas on one PostgreSQL database race for the row `scheduler_lease`: the one holding an
unexpired lease leads (runs the Scheduler); the others stand by, answering every call but
health UNAVAILABLE ("standby: ...") so that clients given every replica's address try the next,
and take the lease over once it lapses (CORRAL_SCHEDULER_LEASE_SECONDS after the leader's last
renewal), each takeover under a higher epoch.

Fencing: every write transaction of the task store first reads the lease row FOR KEY SHARE,
requiring this replica's holder id and epoch (`fence`). A takeover locks the row FOR UPDATE,
which waits for the deposed leader's writes in flight and makes its later ones find another
holder: they are refused (NotLeader) and the deposed replica steps down (exits: its supervisor
starts it again, as a standby). A replica frozen inside a transaction (SIGSTOP, a VM pause)
cannot hold the row past the lease: the fence sets the transaction's
idle_in_transaction_session_timeout, so PostgreSQL ends that session. Lease times are the
database's clock, so replicas' clocks need not agree.

SQLite (the embedded, one-process system) has no lease: the one scheduler leads, unfenced.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from sqlalchemy import Column, Double, Integer, MetaData, String, Table, Text, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from corral.db import is_sqlite

log = structlog.get_logger()

LEASE_NAME = "scheduler"
# Exit status of a replica that lost the lease (not an error: its supervisor restarts it).
STEPPED_DOWN_EXIT = 75
STANDBY_MESSAGE = (
    "standby: this scheduler replica is not the leader (it takes over if the leader's lease "
    "lapses); call another replica"
)
# Calls a standby answers: probes and grpcurl's discovery.
STANDBY_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

metadata = MetaData()
lease_table = Table(
    "scheduler_lease",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("holder", Text, nullable=False, server_default=""),
    Column("epoch", Integer, nullable=False, server_default="0"),
    # Seconds since the epoch, the database's clock.
    Column("expires_at", Double, nullable=False, server_default="0"),
)

_NOW = "extract(epoch from clock_timestamp())"


class NotLeader(Exception):
    """A write by a replica that no longer holds the lease (refused; it steps down)."""


def replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Leadership:
    def __init__(self, engine: AsyncEngine, lease_seconds: float, holder: str = "") -> None:
        self._engine = engine
        self.lease_seconds = lease_seconds
        self.holder = holder or replica_id()
        self.epoch = 0
        # Set by the server once the Scheduler runs (before, a call would find it unstarted);
        # on SQLite too, where the one scheduler always leads.
        self.leading = False
        self.lost = asyncio.Event()
        self._renewing: asyncio.Task[None] | None = None
        # How long PostgreSQL lets a session of ours sit idle inside a lease transaction.
        self._idle_ms = str(max(1, int(lease_seconds * 1000)))

    @property
    def enabled(self) -> bool:
        return not is_sqlite(self._engine)

    async def create_table(self) -> None:
        if not self.enabled:
            return
        async with self._engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(
                text("INSERT INTO scheduler_lease (name, holder, epoch, expires_at) "
                     "VALUES (:name, '', 0, 0) ON CONFLICT (name) DO NOTHING"),
                {"name": LEASE_NAME},
            )

    async def acquire(self) -> None:
        """Waits (as a standby) until this replica holds the lease, then keeps renewing it."""
        if not self.enabled:
            return
        await self.create_table()
        waited = False
        while True:
            try:
                epoch = await self._try_take()
            except DBAPIError as exc:  # the database is away, or a frozen leader holds the row
                log.info("lease not taken; retrying", error=str(exc.orig).splitlines()[0])
                epoch = None
            if epoch is not None:
                break
            if not waited:
                log.info("standing by: another scheduler replica leads", replica=self.holder)
                waited = True
            await asyncio.sleep(self.lease_seconds / 4)
        self.epoch = epoch
        log.info("leading: this scheduler replica took the lease", replica=self.holder, epoch=epoch)
        self._renewing = asyncio.create_task(self._renew_loop(), name="lease-renewal")

    async def stop(self) -> None:
        """After a graceful stop: the lease lapses now, so a standby (or this replica started
        again) need not wait for it to expire."""
        if self._renewing is None:
            return
        self._renewing.cancel()
        await asyncio.gather(self._renewing, return_exceptions=True)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    text("UPDATE scheduler_lease SET expires_at = 0 "
                         "WHERE name = :name AND holder = :holder AND epoch = :epoch"),
                    {"name": LEASE_NAME, "holder": self.holder, "epoch": self.epoch},
                )
        except DBAPIError as exc:  # it lapses by itself
            log.warning("could not give the lease up", error=str(exc.orig).splitlines()[0])

    async def _try_take(self) -> int | None:
        async with self._engine.begin() as conn:
            # A frozen leader's transaction holds the row FOR KEY SHARE: don't queue behind it.
            await conn.execute(text("SET LOCAL lock_timeout = '500ms'"))
            # Frozen between its two statements, a replica must not hold the row for long.
            await conn.execute(
                text("SELECT set_config('idle_in_transaction_session_timeout', :idle, true)"),
                {"idle": self._idle_ms},
            )
            row = (
                await conn.execute(
                    text(f"SELECT holder, epoch, expires_at, {_NOW} AS now FROM scheduler_lease "
                         "WHERE name = :name FOR UPDATE"),
                    {"name": LEASE_NAME},
                )
            ).one()
            if row.holder and row.holder != self.holder and row.expires_at > row.now:
                return None
            epoch = int(row.epoch) + 1
            await conn.execute(
                text(f"UPDATE scheduler_lease SET holder = :holder, epoch = :epoch, "
                     f"expires_at = {_NOW} + :ttl WHERE name = :name"),
                {"holder": self.holder, "epoch": epoch, "ttl": self.lease_seconds, "name": LEASE_NAME},
            )
            return epoch

    async def _renew_loop(self) -> None:
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            await asyncio.sleep(self.lease_seconds / 4)
            try:
                # One statement, autocommitted: no moment idle inside a transaction holding the
                # row (a replica frozen there would keep a takeover waiting).
                async with self._engine.connect() as plain:
                    conn = await plain.execution_options(isolation_level="AUTOCOMMIT")
                    result = await conn.execute(
                        text(f"UPDATE scheduler_lease SET expires_at = {_NOW} + :ttl "
                             "WHERE name = :name AND holder = :holder AND epoch = :epoch"),
                        {"ttl": self.lease_seconds, "name": LEASE_NAME, "holder": self.holder,
                         "epoch": self.epoch},
                    )
                if not getattr(result, "rowcount", 0):
                    self.step_down("another replica took the lease")
                    return
                renewed = loop.time()
            except DBAPIError as exc:
                if loop.time() - renewed > self.lease_seconds:
                    self.step_down(f"the lease could not be renewed for {self.lease_seconds:g}s: {exc.orig}")
                    return
                log.warning("lease renewal failed; retrying", error=str(exc.orig).splitlines()[0])

    async def fence(self, session: AsyncSession) -> None:
        """Inside a write transaction: refuses it unless this replica still holds the lease
        under its epoch (and keeps a takeover waiting until the transaction ends)."""
        if not self.enabled:
            return
        held = (
            await session.execute(
                text("SELECT set_config('idle_in_transaction_session_timeout', :idle, true) "
                     "FROM scheduler_lease WHERE name = :name AND holder = :holder AND epoch = :epoch "
                     "FOR KEY SHARE"),
                {"idle": self._idle_ms, "name": LEASE_NAME, "holder": self.holder, "epoch": self.epoch},
            )
        ).first()
        if held is None:
            self.step_down("a write was refused: another replica holds the lease")
            raise NotLeader(f"scheduler replica {self.holder} (epoch {self.epoch}) is no longer the leader")

    def step_down(self, reason: str) -> None:
        if not self.lost.is_set():
            log.error("stepping down: this scheduler replica lost the lease", reason=reason,
                      replica=self.holder, epoch=self.epoch)
            self.leading = False
            self.lost.set()


class StandbyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """While this replica does not lead: UNAVAILABLE with STANDBY_MESSAGE (health excepted)."""

    def __init__(self, leadership: Leadership) -> None:
        self._leadership = leadership

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or self._leadership.leading
            or handler_call_details.method.startswith(STANDBY_OPEN_PREFIXES)
        ):
            return handler
        for kind, make in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        ):
            behavior = getattr(handler, kind)
            if behavior is not None:
                refuse = _streaming_refusal if inspect.isasyncgenfunction(behavior) else _refusal
                return make(refuse, handler.request_deserializer, handler.response_serializer)
        return handler


async def _refusal(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNAVAILABLE, STANDBY_MESSAGE)


async def _streaming_refusal(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
    await context.abort(grpc.StatusCode.UNAVAILABLE, STANDBY_MESSAGE)
    yield  # an async generator, like the handler it stands for
