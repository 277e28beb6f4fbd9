"""gRPC face of the memory store: translates protos to plain records (the store's corral.errors
exceptions become status codes in the server's interceptor)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from corral.grpc_server import Context
from corral.v1 import memory_pb2, memory_pb2_grpc
from services.memory.metrics import HISTORY_APPENDS, HISTORY_EVENTS
from services.memory.store import HistoryRecord, MemoryStore, NoteRecord


def _timestamp(value: datetime | None) -> Timestamp:
    ts = Timestamp()
    if value is not None:
        ts.FromDatetime(value)
    return ts


def record_from_proto(task_id: str, event: memory_pb2.HistoryEvent) -> HistoryRecord:
    return HistoryRecord(
        task_id=event.task_id or task_id,
        kind=event.kind,
        step_index=event.step_index,
        tool=event.tool,
        action=event.action,
        state=event.state,
        exit_code=event.exit_code if event.HasField("exit_code") else None,
        stdout=event.stdout,
        stderr=event.stderr,
        error=event.error,
        event_id=event.event_id,
        time=event.time.ToDatetime(tzinfo=UTC) if event.HasField("time") else None,
    )


def record_to_proto(record: HistoryRecord) -> memory_pb2.HistoryEvent:
    event = memory_pb2.HistoryEvent(
        task_id=record.task_id,
        sequence=record.sequence,
        time=_timestamp(record.time),
        kind=record.kind,  # type: ignore[arg-type]
        step_index=record.step_index,
        tool=record.tool,
        action=record.action,
        state=record.state,
        stdout=record.stdout,
        stderr=record.stderr,
        error=record.error,
        event_id=record.event_id,
    )
    if record.exit_code is not None:
        event.exit_code = record.exit_code
    return event


def note_to_proto(note: NoteRecord) -> memory_pb2.Note:
    return memory_pb2.Note(
        namespace=note.namespace,
        key=note.key,
        value=note.value,
        updated_at=_timestamp(note.updated_at),
    )


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    async def AppendEvents(
        self, request: memory_pb2.AppendEventsRequest, context: Context
    ) -> memory_pb2.AppendEventsResponse:
        records = [record_from_proto(request.task_id, e) for e in request.events]
        sequences = await self._store.append_events(request.task_id, records)
        HISTORY_APPENDS.inc()
        HISTORY_EVENTS.inc(len(records))
        return memory_pb2.AppendEventsResponse(sequences=sequences)

    async def ListEvents(
        self, request: memory_pb2.ListEventsRequest, context: Context
    ) -> memory_pb2.ListEventsResponse:
        # `finished` first: the final entry is the last a task's history gets, so once it is
        # stored every entry before it is too, and the page read after holds them all. (Read
        # after the page, it could count an entry stored in between: "complete", one short.)
        finished = await self._store.has_finished(request.task_id)
        records = await self._store.list_events(request.task_id, request.after_sequence, request.limit)
        return memory_pb2.ListEventsResponse(events=[record_to_proto(r) for r in records], finished=finished)

    async def Search(self, request: memory_pb2.SearchRequest, context: Context) -> memory_pb2.SearchResponse:
        results = await self._store.search(request.query, request.limit, request.task_id)
        hits = [memory_pb2.SearchHit(event=record_to_proto(r.record), snippet=r.snippet) for r in results]
        return memory_pb2.SearchResponse(hits=hits)

    async def PutNote(
        self, request: memory_pb2.PutNoteRequest, context: Context
    ) -> memory_pb2.PutNoteResponse:
        note = await self._store.put_note(request.namespace, request.key, request.value)
        return memory_pb2.PutNoteResponse(note=note_to_proto(note))

    async def GetNote(
        self, request: memory_pb2.GetNoteRequest, context: Context
    ) -> memory_pb2.GetNoteResponse:
        note = await self._store.get_note(request.namespace, request.key)
        return memory_pb2.GetNoteResponse(note=note_to_proto(note))

    async def ListNotes(
        self, request: memory_pb2.ListNotesRequest, context: Context
    ) -> memory_pb2.ListNotesResponse:
        found = await self._store.list_notes(request.namespace)
        return memory_pb2.ListNotesResponse(notes=[note_to_proto(n) for n in found])
