"""Long-lived sandboxes, the scheduler's side: records, placement on an executor, TTL.

The executor owns the sandbox itself (and removes it at its expiry on its own); the scheduler
keeps the record clients see, routes tasks naming the sandbox to its executor, and ends
records whose time is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Double, Integer, LargeBinary, String, Text, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from corral.api_keys import LOCAL_TENANT
from corral.config import Settings
from corral.errors import (
    CapacityExhausted,
    FailedPrecondition,
    InvalidSandboxRequest,
    QuotaExceeded,
    SandboxEnded,
    SandboxNotFound,
    SandboxUnavailable,
)
from corral.internal.v1 import executor_pb2
from corral.limits import limits_problem
from corral.steps import check_network_rules
from corral.v1 import sandbox_pb2, task_pb2

from .executors import ExecutorRecord, ExecutorRegistry
from .sandbox_secrets import SandboxSecrets
from .store import Base

log = structlog.get_logger()

CREATE_TIMEOUT_SECONDS = 150.0
JUPYTER_TIMEOUT_SECONDS = 150.0
EXPIRY_CHECK_SECONDS = 1.0
# A GET of a sandbox asks its executor for the network counters; a slow one must not hold it.
NETWORK_STATUS_TIMEOUT_SECONDS = 3.0
# An executor's refusal of UpdateSandboxNetwork, passed on as the same kind of error.
_EXECUTOR_REFUSALS: dict[grpc.StatusCode, type[InvalidSandboxRequest | FailedPrecondition]] = {
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidSandboxRequest,
}
ENDED = (sandbox_pb2.SANDBOX_STATE_DELETED, sandbox_pb2.SANDBOX_STATE_EXPIRED, sandbox_pb2.SANDBOX_STATE_FAILED)


class SandboxRow(Base):
    __tablename__ = "scheduler_sandboxes"

    sandbox_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[int] = mapped_column(Integer, index=True)
    expires_at: Mapped[float] = mapped_column(Double, index=True)
    record: Mapped[bytes] = mapped_column(LargeBinary)
    # The owner (corral.api_keys); records from before tenants belong to the local tenant.
    tenant_id: Mapped[str] = mapped_column(Text, index=True, server_default=LOCAL_TENANT)


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class SandboxStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._lock = asyncio.Lock()  # one writer at a time (SQLite)

    async def put(self, sandbox: sandbox_pb2.Sandbox, private: SandboxSecrets | None = None) -> None:
        """Saves the record; `private` (token hashes, host paths) goes with the first one."""
        async with self._lock, self._sessions.begin() as session:
            if private is not None:
                session.add(private.row(sandbox.sandbox_id))
            await session.merge(
                SandboxRow(
                    sandbox_id=sandbox.sandbox_id,
                    state=sandbox.state,
                    expires_at=sandbox.expires_at.ToNanoseconds() / 1e9,
                    record=sandbox.SerializeToString(),
                    tenant_id=sandbox.tenant_id or LOCAL_TENANT,
                )
            )

    async def count_active(self, tenant_id: str) -> int:
        query = select(func.count()).select_from(SandboxRow).where(
            SandboxRow.tenant_id == tenant_id, SandboxRow.state == sandbox_pb2.SANDBOX_STATE_ACTIVE
        )
        async with self._sessions() as session:
            return int(await session.scalar(query) or 0)

    async def get(self, sandbox_id: str) -> sandbox_pb2.Sandbox | None:
        async with self._sessions() as session:
            row = await session.get(SandboxRow, sandbox_id)
            return _parse(row.record) if row is not None else None

    async def all(self, include_ended: bool, tenant_id: str | None = None) -> list[sandbox_pb2.Sandbox]:
        query = select(SandboxRow.record).order_by(SandboxRow.expires_at)
        if tenant_id is not None:
            query = query.where(SandboxRow.tenant_id == tenant_id)
        if not include_ended:
            query = query.where(SandboxRow.state == sandbox_pb2.SANDBOX_STATE_ACTIVE)
        async with self._sessions() as session:
            return [_parse(raw) for raw in (await session.scalars(query)).all()]

    async def expired(self, now: float) -> list[sandbox_pb2.Sandbox]:
        query = select(SandboxRow.record).where(
            SandboxRow.state == sandbox_pb2.SANDBOX_STATE_ACTIVE, SandboxRow.expires_at <= now
        )
        async with self._sessions() as session:
            return [_parse(raw) for raw in (await session.scalars(query)).all()]

    async def end_if_active(
        self, sandbox: sandbox_pb2.Sandbox, state: sandbox_pb2.SandboxState.ValueType, error: str
    ) -> bool:
        """Moves an active record to an ended state; False when it had ended already."""
        sandbox.state, sandbox.error = state, error
        async with self._lock, self._sessions.begin() as session:
            result = await session.execute(
                update(SandboxRow)
                .where(
                    SandboxRow.sandbox_id == sandbox.sandbox_id,
                    SandboxRow.state == sandbox_pb2.SANDBOX_STATE_ACTIVE,
                )
                .values(state=state, record=sandbox.SerializeToString())
            )
            return bool(getattr(result, "rowcount", 0))


def _parse(raw: bytes) -> sandbox_pb2.Sandbox:
    sandbox = sandbox_pb2.Sandbox()
    sandbox.ParseFromString(raw)
    sandbox.DiscardUnknownFields()  # records written before host paths and hashes left Sandbox
    sandbox.tenant_id = sandbox.tenant_id or LOCAL_TENANT  # records from before tenants
    return sandbox


class SandboxCoordinator:
    def __init__(self, store: SandboxStore, executors: ExecutorRegistry, settings: Settings) -> None:
        self.store = store
        self.executors = executors
        self.settings = settings
        self._loop: asyncio.Task[None] | None = None
        # Ids asked of an executor, not yet recorded, and their tenants.
        self._creating: dict[str, str] = {}
        # Ids being created, and the executor each was placed on.
        self._placing: dict[str, str] = {}
        self._placement_lock = asyncio.Lock()

    def start(self) -> None:
        self._loop = asyncio.create_task(self._expiry_loop(), name="sandbox-expiry")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    def _ttl(self, seconds: float) -> float:
        ttl = seconds or self.settings.sandbox_default_ttl_seconds
        if ttl < 0:
            raise InvalidSandboxRequest("ttl must be positive")
        if ttl > self.settings.sandbox_max_ttl_seconds:
            raise InvalidSandboxRequest(
                f"ttl {ttl:g}s exceeds the maximum of {self.settings.sandbox_max_ttl_seconds:g}s"
            )
        return ttl

    async def create(
        self, spec: sandbox_pb2.SandboxSpec, tenant_id: str = LOCAL_TENANT, quota: int = 0
    ) -> tuple[sandbox_pb2.Sandbox, str, str]:
        """Creates a sandbox owned by `tenant_id`; with `quota`, refuses when the tenant
        already has that many active (or being created)."""
        ttl = self._ttl(spec.ttl.ToNanoseconds() / 1e9)
        for name, value in spec.env.items():
            if not name or "=" in name or "\0" in name:
                raise InvalidSandboxRequest(f"env has an invalid variable name {name!r}")
            if "\0" in value:
                raise InvalidSandboxRequest(f"env.{name} contains a NUL character (no environment variable can hold one)")
        problem = limits_problem(spec.limits, self.settings)
        if problem:
            raise InvalidSandboxRequest(problem)
        check_network_rules(spec.network, spec.network_rules, InvalidSandboxRequest)
        if quota:
            held = await self.store.count_active(tenant_id) + sum(
                1 for owner in self._creating.values() if owner == tenant_id
            )
            if held >= quota:
                raise QuotaExceeded(
                    f"quota max_sandboxes exceeded: tenant {tenant_id!r} has {held} active sandboxes "
                    f"(the most allowed is {quota}; delete one or wait for one to expire)",
                    retry_after=10,
                )
        sandbox_id = uuid.uuid4().hex
        executor = await self._place(sandbox_id)
        token, view_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        now = time.time()
        expires_at = now + ttl
        self._creating[sandbox_id] = tenant_id
        try:
            reply = await executor.stub.CreateSandbox(
                executor_pb2.CreateSandboxRequest(
                    sandbox_id=sandbox_id, spec=spec, expires_at=_timestamp(expires_at)
                ),
                timeout=CREATE_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            self._creating.pop(sandbox_id, None)
            await self._unplace(sandbox_id)
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise CapacityExhausted(
                    f"executor {executor.executor_id} could not take the sandbox: {exc.details()}", retry_after=10
                ) from None
            raise SandboxUnavailable(
                f"executor {executor.executor_id} could not create the sandbox: {exc.details()}"
            ) from None
        except BaseException:
            self._creating.pop(sandbox_id, None)
            await self._unplace(sandbox_id)
            raise
        sandbox = sandbox_pb2.Sandbox(
            sandbox_id=sandbox_id,
            state=sandbox_pb2.SANDBOX_STATE_ACTIVE,
            spec=spec,
            executor_id=executor.executor_id,
            created_at=_timestamp(now),
            expires_at=_timestamp(expires_at),
            tenant_id=tenant_id,
        )
        sandbox.spec.ttl.FromNanoseconds(int(ttl * 1e9))
        try:
            await self.store.put(sandbox, SandboxSecrets.for_tokens(token, view_token, reply.host_run_dir))
        finally:
            self._creating.pop(sandbox_id, None)
            await self._unplace(sandbox_id)
        log.info("sandbox created", sandbox_id=sandbox_id, executor_id=executor.executor_id, ttl=ttl)
        return sandbox, token, view_token

    async def placed(self) -> dict[str, int]:
        """Sandboxes per executor: the active records and those being created."""
        counts: dict[str, int] = {}
        for sandbox in await self.store.all(include_ended=False):
            counts[sandbox.executor_id] = counts.get(sandbox.executor_id, 0) + 1
        for executor_id in self._placing.values():
            counts[executor_id] = counts.get(executor_id, 0) + 1
        return counts

    async def _place(self, sandbox_id: str) -> ExecutorRecord:
        """The live executor with the most room for another sandbox (each holds at most its
        max_sandboxes, so sandboxes cannot take the room of its tasks); CapacityExhausted when
        none has any. The count and the placement are one step under the lock, and a placement
        leaves `_placing` only under it once recorded, so two creates cannot take one place."""
        async with self._placement_lock:
            placed = await self.placed()
            room = {
                e.executor_id: e.sandbox_room - placed.get(e.executor_id, 0) for e in self.executors.all() if e.alive
            }
            best = max(room, key=lambda executor_id: room[executor_id], default=None)
            if best is None or room[best] <= 0:
                held = sum(placed.get(executor_id, 0) for executor_id in room)
                raise CapacityExhausted(
                    f"the executors hold as many long-lived sandboxes as they may ({held} on {len(room)} "
                    "executors, CORRAL_EXECUTOR_MAX_SANDBOXES each); delete one or wait for one to expire"
                    if room
                    else "no executor is connected to host a sandbox",
                    retry_after=10,
                )
            self._placing[sandbox_id] = best
        executor = self.executors.get(best)
        assert executor is not None
        return executor

    async def _unplace(self, sandbox_id: str) -> None:
        async with self._placement_lock:
            self._placing.pop(sandbox_id, None)

    async def get(self, sandbox_id: str, tenant_id: str | None = None) -> sandbox_pb2.Sandbox:
        """The sandbox; with `tenant_id`, only if that tenant owns it (another's answers
        exactly as an unknown id)."""
        if not sandbox_id:
            raise InvalidSandboxRequest("sandbox_id is required")
        sandbox = await self.store.get(sandbox_id)
        if sandbox is None or (tenant_id is not None and sandbox.tenant_id != tenant_id):
            raise SandboxNotFound(f"no sandbox with id {sandbox_id!r}")
        return sandbox

    async def active(self, sandbox_id: str, tenant_id: str | None = None) -> sandbox_pb2.Sandbox:
        sandbox = await self.get(sandbox_id, tenant_id)
        if sandbox.state != sandbox_pb2.SANDBOX_STATE_ACTIVE:
            state = sandbox_pb2.SandboxState.Name(sandbox.state).removeprefix("SANDBOX_STATE_").lower()
            raise SandboxEnded(f"sandbox {sandbox_id} is {state}" + (f": {sandbox.error}" if sandbox.error else ""))
        return sandbox

    async def list_sandboxes(self, include_ended: bool, tenant_id: str | None = None) -> list[sandbox_pb2.Sandbox]:
        return await self.store.all(include_ended, tenant_id)

    async def extend(self, sandbox_id: str, ttl_seconds: float, tenant_id: str | None = None) -> sandbox_pb2.Sandbox:
        sandbox = await self.active(sandbox_id, tenant_id)
        ttl = self._ttl(ttl_seconds or sandbox.spec.ttl.ToNanoseconds() / 1e9)
        expires_at = time.time() + ttl
        executor = self.executors.get(sandbox.executor_id)
        if executor is None:
            raise SandboxUnavailable(f"the sandbox's executor {sandbox.executor_id} is not connected")
        try:
            reply = await executor.stub.ExtendSandbox(
                executor_pb2.ExtendSandboxRequest(sandbox_id=sandbox_id, expires_at=_timestamp(expires_at)),
                timeout=self.settings.gateway_rpc_timeout_seconds,
            )
        except grpc.aio.AioRpcError as exc:
            raise SandboxUnavailable(f"executor {sandbox.executor_id}: {exc.details()}") from None
        if not reply.found:
            await self.store.end_if_active(
                sandbox, sandbox_pb2.SANDBOX_STATE_FAILED, "its executor no longer has it"
            )
            raise SandboxEnded(f"sandbox {sandbox_id} is gone from its executor")
        sandbox.expires_at.CopyFrom(_timestamp(expires_at))
        await self.store.put(sandbox)
        return sandbox

    async def delete(self, sandbox_id: str, tenant_id: str | None = None) -> sandbox_pb2.Sandbox:
        sandbox = await self.get(sandbox_id, tenant_id)
        if sandbox.state in ENDED:
            return sandbox
        await self._remove(sandbox, sandbox_pb2.SANDBOX_STATE_DELETED, "")
        return await self.get(sandbox_id)

    async def update_network(
        self, sandbox_id: str, rules: task_pb2.NetworkRules, tenant_id: str | None = None
    ) -> sandbox_pb2.Sandbox:
        """Replaces the rules of a sandbox with network, on its executor and in its record."""
        parsed = check_network_rules(True, rules, InvalidSandboxRequest)
        sandbox = await self.active(sandbox_id, tenant_id)
        if not sandbox.spec.network:
            raise FailedPrecondition(
                f"sandbox {sandbox_id} was created without network; its network rules cannot be "
                "changed (create a sandbox with \"network\": true or {\"allow\": [...]})"
            )
        executor = self._executor_of(sandbox)
        try:
            reply = await executor.stub.UpdateSandboxNetwork(
                executor_pb2.UpdateSandboxNetworkRequest(sandbox_id=sandbox_id, rules=rules),
                timeout=self.settings.gateway_rpc_timeout_seconds,
            )
        except grpc.aio.AioRpcError as exc:
            refusal = _EXECUTOR_REFUSALS.get(exc.code())
            if refusal is not None:  # the driver's own words (e.g. it cannot change rules)
                raise refusal(exc.details() or "refused by the executor") from None
            raise SandboxUnavailable(f"executor {sandbox.executor_id}: {exc.details()}") from None
        # Stored after the executor applied them: the record never shows rules not in force.
        sandbox = await self.active(sandbox_id, tenant_id)
        sandbox.spec.network_rules.CopyFrom(rules)
        await self.store.put(sandbox)
        sandbox.network_status.CopyFrom(reply.status)
        log.info("sandbox network rules changed", sandbox_id=sandbox_id, allow=parsed.allow, deny=parsed.deny)
        return sandbox

    async def with_network_status(self, sandbox: sandbox_pb2.Sandbox) -> sandbox_pb2.Sandbox:
        """The record with its executor's network status, when it has network and the
        executor answers (a GET never fails because the counters cannot be read)."""
        if sandbox.state != sandbox_pb2.SANDBOX_STATE_ACTIVE or not sandbox.spec.network:
            return sandbox
        executor = self.executors.get(sandbox.executor_id)
        if executor is None or not executor.alive:
            return sandbox
        try:
            reply = await executor.stub.GetSandboxNetwork(
                executor_pb2.GetSandboxNetworkRequest(sandbox_id=sandbox.sandbox_id),
                timeout=min(NETWORK_STATUS_TIMEOUT_SECONDS, self.settings.gateway_rpc_timeout_seconds),
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("no network status from the executor", sandbox_id=sandbox.sandbox_id, error=exc.details())
            return sandbox
        if reply.HasField("status"):
            sandbox.network_status.CopyFrom(reply.status)
        return sandbox

    def _executor_of(self, sandbox: sandbox_pb2.Sandbox) -> ExecutorRecord:
        executor = self.executors.get(sandbox.executor_id)
        if executor is None or not executor.alive:
            raise SandboxUnavailable(f"the sandbox's executor {sandbox.executor_id} is not connected")
        return executor

    async def start_jupyter(self, sandbox_id: str, base_url: str) -> str:
        sandbox = await self.active(sandbox_id)
        executor = self.executors.get(sandbox.executor_id)
        if executor is None or not executor.alive:
            raise SandboxUnavailable(f"the sandbox's executor {sandbox.executor_id} is not connected")
        try:
            reply = await executor.stub.StartJupyter(
                executor_pb2.StartJupyterRequest(sandbox_id=sandbox_id, base_url=base_url),
                timeout=JUPYTER_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            raise SandboxUnavailable(f"could not start Jupyter in sandbox {sandbox_id}: {exc.details()}") from None
        return reply.host_socket

    # --- executors coming and going ------------------------------------------------------

    async def reconcile(self, executor_id: str, held: list[str]) -> list[str]:
        """An executor (re)registered holding `held`: records placed on it that it no longer
        holds fail; the ids it holds that are not active here come back for it to remove."""
        active = await self._fail_placed_on(
            executor_id, f"its executor {executor_id} restarted and no longer has it", spare={*held, *self._creating}
        )
        return [
            sandbox_id
            for sandbox_id in held
            if sandbox_id not in self._creating
            and (sandbox_id not in active or active[sandbox_id].executor_id != executor_id)
        ]

    async def executor_lost(self, executor_id: str, reason: str) -> None:
        """The executor stopped heartbeating: its sandboxes' records fail, naming it."""
        await self._fail_placed_on(executor_id, reason, spare=set())

    async def _fail_placed_on(self, executor_id: str, reason: str, spare: set[str]) -> dict[str, sandbox_pb2.Sandbox]:
        """Fails the active records placed on `executor_id`, except those in `spare`; returns
        every record that was active before, by id."""
        active = {s.sandbox_id: s for s in await self.store.all(include_ended=False)}
        for sandbox in active.values():
            if sandbox.executor_id != executor_id or sandbox.sandbox_id in spare:
                continue
            if await self.store.end_if_active(sandbox, sandbox_pb2.SANDBOX_STATE_FAILED, reason):
                log.warning("sandbox lost with its executor", sandbox_id=sandbox.sandbox_id, executor_id=executor_id)
        return active

    async def _remove(self, sandbox: sandbox_pb2.Sandbox, state: sandbox_pb2.SandboxState.ValueType, error: str) -> None:
        if not await self.store.end_if_active(sandbox, state, error):
            return
        executor = self.executors.get(sandbox.executor_id)
        if executor is not None:
            try:
                await executor.stub.DeleteSandbox(
                    executor_pb2.DeleteSandboxRequest(sandbox_id=sandbox.sandbox_id),
                    timeout=self.settings.gateway_rpc_timeout_seconds,
                )
            except grpc.aio.AioRpcError as exc:  # it removes it itself at expiry anyway
                log.warning("executor did not delete the sandbox", sandbox_id=sandbox.sandbox_id, error=exc.details())
        log.info("sandbox ended", sandbox_id=sandbox.sandbox_id, state=sandbox_pb2.SandboxState.Name(state))

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_CHECK_SECONDS)
            try:
                for sandbox in await self.store.expired(time.time()):
                    await self._remove(sandbox, sandbox_pb2.SANDBOX_STATE_EXPIRED, "its time ran out")
            except Exception:
                log.exception("sandbox expiry round failed")
