"""The scheduler's logic, free of gRPC servicer plumbing.

A task is stored as `scheduled`; the dispatcher hands it to the live executor with the most
free slots and follows the executor's event stream, numbering and storing every event so
watchers can replay and follow it. A task never stays `running` without a live executor:
a broken stream or a silent executor ends it `failed` with a reason naming the executor.

An assignment (task -> executor, under a new epoch) is stored before RunTask is sent. After a
restart, the scheduler waits for each executor that had tasks to register again and report what
it holds: those tasks it follows again from the last event it stored (AttachTask); those never
started there go back to the queue; only the tasks of an executor that does not come back within
CORRAL_EXECUTOR_ORPHAN_GRACE_SECONDS end `failed`, naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator

import grpc
import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit import AuditLog
from corral.config import Settings
from corral.errors import (
    FailedPrecondition,
    InvalidArgument,
    InvalidTask,
    NotFound,
    QuotaExceeded,
    TaskAlreadyFinished,
    TaskNotFound,
)
from corral.internal.v1 import executor_pb2, registry_pb2
from corral.schema import TERMINAL_TASK_STATES
from corral.steps import check_spec
from corral.tracing import Contexts
from corral.v1 import task_pb2

from .events import EventLog
from .executors import ExecutorRecord, ExecutorRegistry
from .idempotency import Claim, IdempotencyKeys, forget_expired
from .principal import LOCAL, Principal
from .quotas import SubmissionRate
from .sandboxes import SandboxCoordinator
from .store import TaskStore, decode_page_token

log = structlog.get_logger()

CANCEL_GRACE_SECONDS = 5.0
# At start: tasks that ended this recently are checked for a `finished` event (see
# _end_logs_cut_short); the event log is written a moment behind the task's state.
CUT_SHORT_LOG_SECONDS = 60.0
# Executor events that change the stored task (its state, its steps).
PROGRESS_EVENTS = frozenset({"started", "step_started", "step_finished"})


class Scheduler:
    def __init__(self, store: TaskStore, settings: Settings) -> None:
        self._store = store
        self.store = store
        self._settings = settings
        self.executors = ExecutorRegistry(settings)
        self._assignments: dict[str, asyncio.Task[None]] = {}
        self._assigned_to: dict[str, ExecutorRecord] = {}
        self._events = EventLog(store)
        self._wake = asyncio.Event()
        self._assign_lock = asyncio.Lock()
        self._loops: list[asyncio.Task[None]] = []
        # Long-lived sandboxes (set by the server); tasks naming one run on its executor, one
        # at a time: _sandbox_of maps an assigned task to its sandbox.
        self.sandboxes: SandboxCoordinator | None = None
        self._sandbox_of: dict[str, str] = {}
        # After a restart: each executor's tasks as stored (task id -> (epoch, state)), until it
        # registers again or the orphan grace ends.
        self._orphans: dict[str, dict[str, tuple[int, int]]] = {}
        self._letting_go: set[asyncio.Task[None]] = set()  # best-effort CancelTask calls
        self._taking_back: set[str] = set()  # executors whose registration is taking tasks back
        # This replica's leadership epoch (set when it takes the lease; 0: no lease, SQLite). Sent
        # with every call that acts on a run, so an executor refuses a deposed leader's.
        self.leader_epoch = 0
        # Tenants' submissions (set by the server; None: no audit log).
        self.audit: AuditLog | None = None
        self.submissions = SubmissionRate(settings.quota_submissions_per_second)
        self._quota_lock = asyncio.Lock()  # a tenant's count and its new task, together
        self.idempotency = IdempotencyKeys(store.engine, settings.idempotency_key_hours * 3600)
        self.traces = Contexts()  # each submitted task's trace, until it is dispatched

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self._store.create_tables()
        await self._store.load()  # every unfinished task in memory: dispatch reads no database
        self._events.start()
        await self._end_logs_cut_short()
        for task_id, executor_id, epoch, state in await self._store.assigned_unfinished():
            self._orphans.setdefault(executor_id, {})[task_id] = (epoch, state)
        if self._orphans:
            log.info(
                "waiting for executors to report their tasks",
                executors=len(self._orphans),
                tasks=sum(len(t) for t in self._orphans.values()),
            )
        self._loops = [
            asyncio.create_task(self._dispatch_loop(), name="dispatch"),
            asyncio.create_task(self._liveness_loop(), name="liveness"),
            asyncio.create_task(self._orphan_deadline(), name="orphans"),
        ]
        self._wake.set()

    async def stop(self) -> None:
        """Stops following the running tasks; their executors keep them for the orphan grace
        (the next scheduler takes them back), so nothing is failed here."""
        for loop in self._loops:
            loop.cancel()
        for assignment in list(self._assignments.values()):
            assignment.cancel()
        await asyncio.gather(*self._assignments.values(), *self._loops, return_exceptions=True)
        await self._events.stop()
        await self.executors.close()

    # --- client-facing -----------------------------------------------------------------

    async def submit(self, spec: task_pb2.TaskSpec, who: Principal = LOCAL) -> task_pb2.Task:
        """Stores a task owned by `who`'s tenant; running it in a sandbox needs owning that."""
        return (await self.submit_once(spec, who, ""))[0]

    async def submit_once(
        self, spec: task_pb2.TaskSpec, who: Principal, idempotency_key: str
    ) -> tuple[task_pb2.Task, bool]:
        """submit(), and with a key: the task an earlier request with that key created, if
        any (then True: a replay, nothing created; before any quota, so a retry is not refused)."""
        claim = Claim.of(who.tenant_id, idempotency_key, "SubmitTask", spec) if idempotency_key else None
        if claim is not None and (replayed := await self._replayed_task(claim)) is not None:
            return replayed, True
        check_spec(spec, self._settings)
        if spec.sandbox_id:
            if self.sandboxes is None:
                raise InvalidTask("this scheduler does not manage sandboxes")
            try:
                await self.sandboxes.active(spec.sandbox_id, who.scope)  # NOT_FOUND / FAILED_PRECONDITION
            except NotFound:
                self.refused("SubmitTask", who, "sandbox of another tenant or unknown", sandbox_id=spec.sandbox_id)
                raise
        task_id = uuid.uuid4().hex
        try:
            task = await self._create(task_id, spec, who, claim)
        except IntegrityError:
            # A concurrent request with the same key stored its task first (the key is unique).
            if claim is None or (replayed := await self._replayed_task(claim)) is None:
                raise
            return replayed, True
        self._events.open_new(task_id)
        await self._append(task_pb2.TaskEvent(task_id=task_id, scheduled=task_pb2.TaskScheduled()))
        log.info("task scheduled", task_id=task_id, steps=len(spec.steps))
        self.traces.remember(task_id)  # its RunTask is traced as part of this SubmitTask
        self._wake.set()
        return task, False

    async def _replayed_task(self, claim: Claim) -> task_pb2.Task | None:
        task_id = await self.idempotency.earlier(claim)
        if not task_id:
            return None
        task = await self._store.get(task_id)
        if task is None:
            raise TaskNotFound(f"the task {task_id} made by idempotency key {claim.key!r} was removed (retention)")
        return task

    async def _create(
        self, task_id: str, spec: task_pb2.TaskSpec, who: Principal, claim: Claim | None
    ) -> task_pb2.Task:
        """The task stored (with its idempotency key, in one transaction), within the quota."""
        lifetime = self.idempotency.lifetime

        async def keep_key(session: AsyncSession) -> None:
            if claim is not None:
                await forget_expired(session, claim, lifetime)
                session.add(claim.row(task_id))

        if who.admin:
            return await self._store.create(task_id, spec, who.tenant_id, keep_key)
        async with self._quota_lock:
            unfinished = await self._store.count_unfinished(who.tenant_id)
            limit = self._settings.quota_max_tasks
            if unfinished >= limit:
                raise QuotaExceeded(
                    f"quota max_tasks exceeded: tenant {who.tenant_id!r} has {unfinished} "
                    f"unfinished tasks (the most allowed is {limit}); retry when some have ended",
                    retry_after=5,
                )
            self.submissions.take(who)
            return await self._store.create(task_id, spec, who.tenant_id, keep_key)

    def refused(self, method: str, who: Principal, reason: str, **fields: str) -> None:
        if self.audit is not None:
            self.audit.refused(method, reason, who, **fields)

    async def get(self, task_id: str, who: Principal = LOCAL, method: str = "GetTask") -> task_pb2.Task:
        """The task; another tenant's answers exactly as an unknown id."""
        task = await self._store.get(task_id)
        if task is not None and not who.owns(task.tenant_id):
            self.refused(method, who, "task of another tenant", task_id=task_id)
            task = None
        if task is None:
            raise TaskNotFound(f"no task with id {task_id!r}")
        return task

    async def list_tasks(
        self, state: int, page_size: int, page_token: str, who: Principal = LOCAL
    ) -> tuple[list[task_pb2.Task], str]:
        if page_token:
            try:
                decode_page_token(page_token)
            except ValueError:
                raise InvalidArgument("page_token is not valid") from None
        return await self._store.list_tasks(state, page_size, page_token, who.scope)

    async def cancel(self, task_id: str, who: Principal = LOCAL) -> task_pb2.Task:
        task = await self.get(task_id, who, "CancelTask")
        if task.state in TERMINAL_TASK_STATES:
            raise TaskAlreadyFinished(
                f"task {task_id} already ended ({task_pb2.TaskState.Name(task.state)})"
            )
        async with self._assign_lock:
            executor = self._assigned_to.get(task_id)
            if executor is None:
                await self._finish(task_id, task_pb2.TASK_STATE_CANCELLED, "cancelled by request")
                return await self.get(task_id)
        log.info("cancelling task", task_id=task_id, executor_id=executor.executor_id)
        try:
            reply = await executor.stub.CancelTask(
                executor_pb2.CancelTaskRequest(
                    task_id=task_id, reason="cancelled by request", leader_epoch=self.leader_epoch
                ),
                timeout=CANCEL_GRACE_SECONDS,
            )
            found = reply.found
        except grpc.aio.AioRpcError as exc:
            log.warning("executor did not take the cancel", task_id=task_id, error=exc.details())
            found = False
        if found:  # the executor reports the cancellation through the task's event stream
            await self._wait_until_terminal(task_id, CANCEL_GRACE_SECONDS)
        if (await self.get(task_id)).state not in TERMINAL_TASK_STATES:
            assignment = self._assignments.get(task_id)
            if assignment is not None:
                assignment.cancel()
            await self._finish(task_id, task_pb2.TASK_STATE_CANCELLED, "cancelled by request")
        return await self.get(task_id)

    async def watch(
        self, task_id: str, after_sequence: int, who: Principal = LOCAL
    ) -> AsyncIterator[task_pb2.TaskEvent]:
        """Replays events after `after_sequence`, then follows live until `finished`."""
        await self.get(task_id, who, "WatchTask")
        last = after_sequence
        while True:
            signal = self._events.signal(task_id)
            events = await self._events.after(task_id, last)
            for event in events:
                last = event.sequence
                yield event
                if event.HasField("finished"):
                    return
            if events:
                continue
            state = await self._store.state(task_id)
            ended = state is None or state in TERMINAL_TASK_STATES
            # Every event is appended by this process and signalled, so waiting is cheap; the
            # timeout is a safety net. An ended task's `finished` event is written just after
            # its state, so give it a moment before concluding there is nothing left.
            # (asyncio.timeout, not wait_for: no task made per wait.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0 if ended else 15.0):
                    await signal.wait()
            if ended and not await self._events.after(task_id, last, limit=1):
                return  # nothing left to replay (e.g. the watch began after `finished`)

    # --- executor-facing ---------------------------------------------------------------

    async def register_executor(
        self,
        executor_id: str,
        address: str,
        capacity: int,
        driver: str,
        sandbox_ids: list[str],
        held: list[registry_pb2.HeldTask] | None = None,
    ) -> tuple[list[str], list[str]]:
        """Registers (or re-registers) an executor; returns the sandboxes it should remove and
        the tasks among `held` it should let go."""
        if not executor_id or not address:
            raise InvalidArgument("executor_id and address are required")
        if capacity < 1:
            raise InvalidArgument("capacity must be at least 1")
        stale: list[str] = []
        if self.sandboxes is not None:
            stale = await self.sandboxes.reconcile(executor_id, sandbox_ids)
        record = self.executors.register(executor_id, address, capacity, driver)
        log.info("executor registered", executor_id=executor_id, address=address, capacity=capacity)
        # Taking many tasks back can outlast the heartbeat timeout (the executor heartbeats
        # only once this call returns): it is not silent meanwhile.
        self._taking_back.add(executor_id)
        try:
            drop = await self._take_back(record, held or [])
        finally:
            self._taking_back.discard(executor_id)
            self.executors.heartbeat(executor_id)
        self._wake.set()
        return stale, drop

    async def _take_back(self, executor: ExecutorRecord, held: list[registry_pb2.HeldTask]) -> list[str]:
        """After a restart: follows again the tasks the executor reports, requeues those it never
        started; returns the reported tasks no longer assigned there (to be let go)."""
        async with self._assign_lock:
            orphans = self._orphans.pop(executor.executor_id, {})
            drop: list[str] = []
            for task in held:
                if task.task_id in self._assigned_to:
                    continue  # followed right now (a re-registration without a restart)
                stored = orphans.pop(task.task_id, None)
                state = await self._store.state(task.task_id)
                if stored is None or stored[0] != task.epoch or state is None or state in TERMINAL_TASK_STATES:
                    drop.append(task.task_id)  # ended (e.g. cancelled meanwhile), or assigned anew
                    continue
                after = await self._store.last_source_sequence(task.task_id)
                if state == task_pb2.TASK_STATE_SCHEDULED and after > 0:
                    # Its `started` was stored, not the state it implies (killed in between).
                    await self._store.mark_running(task.task_id, executor_id=executor.executor_id)
                log.info("following a task again", task_id=task.task_id, executor_id=executor.executor_id,
                         after_sequence=after, executor_last=task.last_sequence)
                found = await self._store.state_and_spec(task.task_id)
                if found is not None and found[1].sandbox_id:
                    self._sandbox_of[task.task_id] = found[1].sandbox_id  # one task at a time there
                self._follow(executor, task.task_id, None, task.epoch, after)
            for task_id, (_, state) in orphans.items():
                if state == task_pb2.TASK_STATE_SCHEDULED and await self._store.last_source_sequence(task_id) == 0:
                    log.info("assigned task never started; requeued", task_id=task_id,
                             executor_id=executor.executor_id)
                    await self._store.unassign(task_id)
                else:
                    await self._finish(
                        task_id,
                        task_pb2.TASK_STATE_FAILED,
                        f"executor {executor.executor_id} ({executor.address}) came back without the task "
                        "(it restarted or gave the task up while the scheduler was away)",
                    )
        return drop

    async def _end_logs_cut_short(self) -> None:
        """A scheduler killed between storing a task's end and storing its `finished` event
        (its executor, having sent everything, let the task go): the event is added now, from
        the stored state, so that the task's log ends as the task did and watchers stop."""
        since = time.time() - CUT_SHORT_LOG_SECONDS
        for task_id, state, error, raw in await self._store.recently_ended(since):
            last = task_pb2.TaskEvent()
            last.ParseFromString(raw)
            if not last.HasField("finished"):
                log.info("task's log lacked its end; `finished` added", task_id=task_id)
                await self._append(task_pb2.TaskEvent(
                    task_id=task_id,
                    finished=task_pb2.TaskFinished(state=task_pb2.TaskState.ValueType(state), error=error),
                ))

    async def _orphan_deadline(self) -> None:
        """Fails the tasks of executors that did not come back within the grace."""
        if not self._orphans:
            return
        grace = self._settings.executor_orphan_grace_seconds
        await asyncio.sleep(grace)
        async with self._assign_lock:
            orphans, self._orphans = self._orphans, {}
        for executor_id, tasks in orphans.items():
            for task_id in tasks:
                await self._finish(
                    task_id,
                    task_pb2.TASK_STATE_FAILED,
                    f"executor {executor_id} did not come back within {grace:g}s of the scheduler's "
                    "restart; the task was lost with it",
                )

    def heartbeat(self, executor_id: str) -> bool:
        known = self.executors.heartbeat(executor_id)
        if known:
            self._wake.set()
        return known

    # --- internals ---------------------------------------------------------------------

    async def _append(self, event: task_pb2.TaskEvent) -> None:
        await self._events.append(event)

    async def _wait_until_terminal(self, task_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            signal = self._events.signal(task_id)
            task = await self._store.get(task_id)
            if task is None or task.state in TERMINAL_TASK_STATES:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    await signal.wait()

    async def _finish(self, task_id: str, state: task_pb2.TaskState.ValueType, error: str) -> None:
        """Ends a task the executor could not end itself; no-op if it already ended."""
        if not await self._store.finish_if_not_terminal(task_id, state, error):
            return  # (its unfinished steps were closed with it)
        await self._append(
            task_pb2.TaskEvent(task_id=task_id, finished=task_pb2.TaskFinished(state=state, error=error))
        )
        log.info("task ended", task_id=task_id, state=task_pb2.TaskState.Name(state), error=error)

    async def _dispatch_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._dispatch_once()
            except Exception:  # keep dispatching whatever one round hit
                log.exception("dispatch round failed")

    async def _dispatch_once(self) -> None:
        free = sum(e.free for e in self.executors.all())
        if free <= 0:
            return
        candidates = await self._store.scheduled_task_ids(limit=free + len(self._assigned_to))
        async with self._assign_lock:
            for task_id in candidates:
                if task_id in self._assigned_to:
                    continue
                found = await self._store.state_and_spec(task_id)
                if found is None or found[0] != task_pb2.TASK_STATE_SCHEDULED:
                    continue  # cancelled meanwhile
                if found[1].sandbox_id:
                    executor = await self._sandbox_executor(task_id, found[1].sandbox_id)
                    if executor is None:
                        continue  # its sandbox is busy (or gone: then the task was failed)
                    self._sandbox_of[task_id] = found[1].sandbox_id
                else:
                    executor = self.executors.pick()
                    if executor is None:
                        return
                epoch = await self._store.assign(task_id, executor.executor_id)
                if epoch is None:
                    self._sandbox_of.pop(task_id, None)
                    continue  # cancelled meanwhile
                self._follow(executor, task_id, found[1], epoch)

    def _follow(
        self, executor: ExecutorRecord, task_id: str, spec: task_pb2.TaskSpec | None, epoch: int, after: int = 0
    ) -> None:
        """Runs the task on the executor (spec given) or follows it there again (spec None)."""
        executor.running.add(task_id)
        self._assigned_to[task_id] = executor
        token = self.traces.attach(task_id)  # the new task's context is a copy of the current one
        try:
            self._assignments[task_id] = asyncio.create_task(
                self._run_on(executor, task_id, spec, epoch, after), name=f"task-{task_id}"
            )
        finally:
            Contexts.detach(token)
        self.traces.forget(task_id)

    async def _run_on(
        self, executor: ExecutorRecord, task_id: str, spec: task_pb2.TaskSpec | None, epoch: int, after: int
    ) -> None:
        bound = log.bind(task_id=task_id, executor_id=executor.executor_id, epoch=epoch)
        started = spec is None  # following again: it started before the restart
        finished = False
        # The task's stored state follows its events in order, written beside the stream so
        # that no database write delays the next event on its way to watchers.
        progress: asyncio.Queue[task_pb2.TaskEvent] = asyncio.Queue()
        progress_writer = asyncio.create_task(self._store_progress(progress), name=f"progress-{task_id}")
        try:
            call: AsyncIterable[executor_pb2.RunTaskResponse | executor_pb2.AttachTaskResponse] = (
                executor.stub.RunTask(
                    executor_pb2.RunTaskRequest(task_id=task_id, spec=spec, epoch=epoch, leader_epoch=self.leader_epoch)
                )
                if spec is not None
                else executor.stub.AttachTask(
                    executor_pb2.AttachTaskRequest(
                        task_id=task_id, epoch=epoch, after_sequence=after, leader_epoch=self.leader_epoch
                    )
                )
            )
            async for response in call:
                event = response.event
                source = event.sequence
                if source and source <= after:
                    continue  # stored already (an executor older than AttachTask's after_sequence)
                after = source or after
                event.task_id = task_id
                started = started or event.HasField("started")
                if event.HasField("finished"):
                    await progress.join()  # every step stored before the task's end
                    await self._record_finished(event, source)
                    finished = True
                    continue  # to the stream's end: the executor then knows we have it all
                await self._events.append(event, source)
                if event.WhichOneof("event") in PROGRESS_EVENTS:
                    progress.put_nowait(event)
            await progress.join()
            if not finished:
                await self._finish(
                    task_id,
                    task_pb2.TASK_STATE_FAILED,
                    f"executor {executor.executor_id} ({executor.address}) closed the task's "
                    "stream without a result",
                )
                self._let_go(executor, task_id)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if not started and code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                # Nothing ran yet: put the task back in the queue for another try.
                bound.info("executor could not take the task; requeued", code=code.name)
                await self._store.unassign(task_id)
                if code == grpc.StatusCode.UNAVAILABLE:
                    executor.alive = False
                else:
                    await asyncio.sleep(0.2)  # it is full right now; don't spin on it
            else:
                lost = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                reason = (
                    f"executor {executor.executor_id} ({executor.address}) was lost while running "
                    f"the task: {code.name}: {exc.details()}"
                    if lost
                    else f"executor {executor.executor_id} refused the task: {code.name}: {exc.details()}"
                )
                await self._finish(task_id, task_pb2.TASK_STATE_FAILED, reason)
                if lost:
                    self._let_go(executor, task_id)
        except asyncio.CancelledError:
            bound.info("stopped following the task")
            raise
        except Exception as exc:
            bound.exception("following the task failed")
            await self._finish(task_id, task_pb2.TASK_STATE_FAILED, f"internal scheduler error: {exc}")
            self._let_go(executor, task_id)
        finally:
            progress_writer.cancel()
            executor.running.discard(task_id)
            self._sandbox_of.pop(task_id, None)
            self._assigned_to.pop(task_id, None)
            self._assignments.pop(task_id, None)
            self._wake.set()

    def _let_go(self, executor: ExecutorRecord, task_id: str) -> None:
        """Tells an executor that may still be alive to cancel a task failed here (it would keep
        it running, as for a scheduler restart, for the orphan grace); best effort."""

        async def cancel() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await executor.stub.CancelTask(
                    executor_pb2.CancelTaskRequest(
                        task_id=task_id, reason="the scheduler failed the task", leader_epoch=self.leader_epoch
                    ),
                    timeout=CANCEL_GRACE_SECONDS,
                )

        task = asyncio.get_running_loop().create_task(cancel(), name=f"let-go-{task_id}")
        self._letting_go.add(task)
        task.add_done_callback(self._letting_go.discard)

    async def _sandbox_executor(self, task_id: str, sandbox_id: str) -> ExecutorRecord | None:
        """The executor holding the task's sandbox if it can run the task now; else None, and
        the task is failed when the sandbox or its executor is gone."""
        if sandbox_id in self._sandbox_of.values():
            return None  # one task at a time in a sandbox
        assert self.sandboxes is not None
        try:
            sandbox = await self.sandboxes.active(sandbox_id)
        except (NotFound, FailedPrecondition) as exc:
            await self._finish(task_id, task_pb2.TASK_STATE_FAILED, str(exc))
            return None
        executor = self.executors.get(sandbox.executor_id)
        if executor is None or not executor.alive:
            await self._finish(
                task_id,
                task_pb2.TASK_STATE_FAILED,
                f"executor {sandbox.executor_id} holding sandbox {sandbox_id} is not connected",
            )
            return None
        return executor if executor.free > 0 else None

    async def _record_finished(self, event: task_pb2.TaskEvent, source: int = 0) -> None:
        """The executor's `finished`: the state is checked and stored first, so there is
        exactly one `finished` event per task (it may have ended already, e.g. declared lost)."""
        task_id = event.task_id
        state, error = event.finished.state, event.finished.error
        if not await self._store.finish_if_not_terminal(task_id, state, error):
            return
        await self._events.append(event, source)

    async def _store_progress(self, queue: asyncio.Queue[task_pb2.TaskEvent]) -> None:
        """Stores, in order, what started / step_started / step_finished events say."""
        while True:
            event = await queue.get()
            try:
                await self._save_progress(event)
            except Exception:  # the events went out; a lost state write must not stop the task
                log.exception("storing a task's progress failed", task_id=event.task_id)
            finally:
                queue.task_done()

    async def _save_progress(self, event: task_pb2.TaskEvent) -> None:
        task_id = event.task_id
        kind = event.WhichOneof("event")
        if kind == "started":
            executor = self._assigned_to.get(task_id)
            await self._store.mark_running(
                task_id,
                started_at=time.time(),
                executor_id=event.started.executor_id or (executor.executor_id if executor else ""),
                task_dir=event.started.task_dir,
            )
        elif kind == "step_started":
            result = task_pb2.StepResult(
                index=event.step_started.index,
                tool=event.step_started.tool,
                state=task_pb2.STEP_STATE_RUNNING,
            )
            result.started_at.CopyFrom(event.time)
            await self._store.save_step(task_id, result)
        elif kind == "step_finished":
            await self._store.save_step(task_id, event.step_finished.result)

    async def _liveness_loop(self) -> None:
        timeout = self._settings.heartbeat_timeout_seconds
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            for executor in self.executors.silent_since(timeout):
                if executor.executor_id in self._taking_back:
                    continue
                silent = time.monotonic() - executor.last_seen
                executor.alive = False
                log.warning("executor lost", executor_id=executor.executor_id, silent_seconds=round(silent, 1))
                lost = (
                    f"executor {executor.executor_id} ({executor.address}) stopped heartbeating "
                    f"({silent:.0f}s without a heartbeat) and was declared lost"
                )
                try:
                    if self.sandboxes is not None:
                        await self.sandboxes.executor_lost(executor.executor_id, lost)
                    for task_id in list(executor.running):
                        assignment = self._assignments.get(task_id)
                        if assignment is not None:
                            assignment.cancel()
                        await self._finish(task_id, task_pb2.TASK_STATE_FAILED, lost)
                except Exception:  # the loop must go on watching the other executors
                    log.exception("could not end the lost executor's work", executor_id=executor.executor_id)
