"""The memory service over real gRPC: history, search, notes, errors, health, reflection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from harness import Cluster

from corral.v1 import memory_pb2
from corral.v1.memory_pb2_grpc import MemoryServiceStub


def action(task_id: str, index: int, command: str) -> memory_pb2.HistoryEvent:
    return memory_pb2.HistoryEvent(
        task_id=task_id,
        kind=memory_pb2.HISTORY_KIND_ACTION,
        step_index=index,
        tool="shell",
        action=command,
    )


def result(task_id: str, index: int, stdout: str, exit_code: int = 0) -> memory_pb2.HistoryEvent:
    return memory_pb2.HistoryEvent(
        task_id=task_id,
        kind=memory_pb2.HISTORY_KIND_RESULT,
        step_index=index,
        tool="shell",
        state="completed" if exit_code == 0 else "failed",
        exit_code=exit_code,
        stdout=stdout,
    )


async def test_append_assigns_sequences_and_list_returns_them_in_order(
    memory: MemoryServiceStub,
) -> None:
    first = await memory.AppendEvents(
        memory_pb2.AppendEventsRequest(
            task_id="t1", events=[action("t1", 0, "echo hi"), result("t1", 0, "hi\n")]
        )
    )
    second = await memory.AppendEvents(
        memory_pb2.AppendEventsRequest(task_id="t1", events=[action("", 1, "false")])
    )
    assert list(first.sequences) == [1, 2]
    assert list(second.sequences) == [3]

    listed = await memory.ListEvents(memory_pb2.ListEventsRequest(task_id="t1"))
    assert [e.sequence for e in listed.events] == [1, 2, 3]
    assert [e.action for e in listed.events] == ["echo hi", "", "false"]
    assert listed.events[1].stdout == "hi\n"
    assert listed.events[1].HasField("exit_code") and listed.events[1].exit_code == 0
    assert not listed.events[0].HasField("exit_code")
    assert listed.events[2].task_id == "t1"  # filled from the request
    assert all(e.HasField("time") for e in listed.events)

    after = await memory.ListEvents(memory_pb2.ListEventsRequest(task_id="t1", after_sequence=1))
    assert [e.sequence for e in after.events] == [2, 3]
    limited = await memory.ListEvents(memory_pb2.ListEventsRequest(task_id="t1", limit=2))
    assert [e.sequence for e in limited.events] == [1, 2]
    other = await memory.ListEvents(memory_pb2.ListEventsRequest(task_id="nope"))
    assert list(other.events) == []


async def test_redelivered_events_are_stored_once_and_finished_is_reported(memory: MemoryServiceStub) -> None:
    # The executor sends again what it could not confirm; each event id is stored once per task.
    events = [action("r", 0, "echo hi"), result("r", 0, "hi\n")]
    for n, event in enumerate(events):
        event.event_id = f"r/{n}"
    request = memory_pb2.AppendEventsRequest(task_id="r", events=events)
    first, again = await asyncio.gather(*(memory.AppendEvents(request) for _ in range(2)))
    assert list(first.sequences) == list(again.sequences) == [1, 2]
    unfinished = await memory.ListEvents(memory_pb2.ListEventsRequest(task_id="r"))
    assert [e.event_id for e in unfinished.events] == ["r/0", "r/1"] and not unfinished.finished

    finished = memory_pb2.HistoryEvent(kind=memory_pb2.HISTORY_KIND_TASK_FINISHED, state="completed", event_id="r/2")
    retry = memory_pb2.AppendEventsRequest(task_id="r", events=[*events, finished])
    assert list((await memory.AppendEvents(retry)).sequences) == [1, 2, 3]
    listed = await memory.ListEvents(memory_pb2.ListEventsRequest(task_id="r", after_sequence=3))
    assert list(listed.events) == [] and listed.finished  # whatever the page
    every = await memory.ListEvents(memory_pb2.ListEventsRequest(task_id="r"))
    assert [e.sequence for e in every.events] == [1, 2, 3]


async def test_concurrent_appends_to_one_task_get_distinct_consecutive_sequences(
    memory: MemoryServiceStub,
) -> None:
    replies = await asyncio.gather(
        *(
            memory.AppendEvents(
                memory_pb2.AppendEventsRequest(
                    task_id="busy", events=[action("busy", i, f"a{i}"), action("busy", i, f"b{i}")]
                )
            )
            for i in range(20)
        )
    )
    sequences = sorted(s for r in replies for s in r.sequences)
    assert sequences == list(range(1, 41))
    for reply in replies:  # one request's events stay together
        assert reply.sequences[1] == reply.sequences[0] + 1


async def test_search_finds_substrings_case_insensitively_across_tasks_newest_first(
    memory: MemoryServiceStub,
) -> None:
    await memory.AppendEvents(
        memory_pb2.AppendEventsRequest(
            task_id="a", events=[action("a", 0, "cat hello.txt"), result("a", 0, "Hello World")]
        )
    )
    await memory.AppendEvents(
        memory_pb2.AppendEventsRequest(
            task_id="b", events=[result("b", 0, "x" * 200 + " say HELLO there " + "y" * 200)]
        )
    )
    found = await memory.Search(memory_pb2.SearchRequest(query="hello"))
    assert [(h.event.task_id, h.event.sequence) for h in found.hits] == [
        ("b", 1),
        ("a", 2),
        ("a", 1),
    ]
    long_snippet = found.hits[0].snippet
    assert "say HELLO there" in long_snippet and len(long_snippet) < 200
    assert long_snippet.startswith("…") and long_snippet.endswith("…")

    only_a = await memory.Search(memory_pb2.SearchRequest(query="HELLO", task_id="a", limit=1))
    assert [(h.event.task_id, h.event.sequence) for h in only_a.hits] == [("a", 2)]


async def test_search_treats_like_wildcards_literally(memory: MemoryServiceStub) -> None:
    await memory.AppendEvents(
        memory_pb2.AppendEventsRequest(
            task_id="w",
            events=[
                action("w", 0, "echo 100% done"),
                action("w", 1, "echo 100 done"),
                action("w", 2, "rm a_b"),
                action("w", 3, "rm axb"),
            ],
        )
    )
    percent = await memory.Search(memory_pb2.SearchRequest(query="100%"))
    assert [h.event.action for h in percent.hits] == ["echo 100% done"]
    underscore = await memory.Search(memory_pb2.SearchRequest(query="a_b"))
    assert [h.event.action for h in underscore.hits] == ["rm a_b"]


async def test_notes_put_get_overwrite_and_list_by_namespace(memory: MemoryServiceStub) -> None:
    put = await memory.PutNote(memory_pb2.PutNoteRequest(namespace="agent", key="k", value="v1"))
    assert put.note.value == "v1" and put.note.HasField("updated_at")
    await memory.PutNote(memory_pb2.PutNoteRequest(namespace="agent", key="k", value="v2"))
    await memory.PutNote(memory_pb2.PutNoteRequest(namespace="agent", key="a", value="first"))
    await memory.PutNote(memory_pb2.PutNoteRequest(namespace="other", key="k", value="elsewhere"))

    got = await memory.GetNote(memory_pb2.GetNoteRequest(namespace="agent", key="k"))
    assert got.note.value == "v2"
    listed = await memory.ListNotes(memory_pb2.ListNotesRequest(namespace="agent"))
    assert [(n.key, n.value) for n in listed.notes] == [("a", "first"), ("k", "v2")]


async def test_errors_carry_status_codes_and_clear_messages(memory: MemoryServiceStub) -> None:
    cases = [
        (memory.GetNote(memory_pb2.GetNoteRequest(namespace="agent", key="missing")), "NOT_FOUND"),
        (memory.PutNote(memory_pb2.PutNoteRequest(namespace="", key="k")), "INVALID_ARGUMENT"),
        (memory.PutNote(memory_pb2.PutNoteRequest(namespace="n", key="")), "INVALID_ARGUMENT"),
        (memory.ListNotes(memory_pb2.ListNotesRequest(namespace="")), "INVALID_ARGUMENT"),
        (memory.ListEvents(memory_pb2.ListEventsRequest(task_id="")), "INVALID_ARGUMENT"),
        (
            memory.AppendEvents(memory_pb2.AppendEventsRequest(events=[action("", 0, "x")])),
            "INVALID_ARGUMENT",
        ),
        (
            memory.AppendEvents(memory_pb2.AppendEventsRequest(task_id="t", events=[action("u", 0, "x")])),
            "INVALID_ARGUMENT",
        ),
        (memory.Search(memory_pb2.SearchRequest(query="")), "INVALID_ARGUMENT"),
        # Longer than SQLite's LIKE takes (50,000 bytes): refused as such, not a failed query.
        (memory.Search(memory_pb2.SearchRequest(query="a" * 60_000)), "INVALID_ARGUMENT"),
    ]
    for call, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code().name == code
        assert caught.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await memory.GetNote(memory_pb2.GetNoteRequest(namespace="agent", key="missing"))
    assert "missing" in (missing.value.details() or "")


async def test_history_survives_a_restart_of_the_store(tmp_path: Path) -> None:
    from services.memory.store import HistoryRecord, MemoryStore

    url = f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'memory.db'}"
    store = await MemoryStore.open(url)
    await store.append_events("t", [HistoryRecord(task_id="t", kind=2, action="ls")])
    await store.close()
    reopened = await MemoryStore.open(url)
    assert [r.sequence for r in await reopened.list_events("t")] == [1]
    assert await reopened.append_events("t", [HistoryRecord(task_id="t", kind=3)]) == [2]
    await reopened.close()


async def test_health_reports_serving_for_the_server_and_the_memory_service(
    memory_cluster: Cluster,
) -> None:
    async with memory_cluster.aio_channel(memory_cluster.memory_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "corral.v1.MemoryService"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services_and_describes_memory_methods(memory_cluster: Cluster) -> None:
    with memory_cluster.channel(memory_cluster.memory_address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {
            "corral.v1.MemoryService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= services
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("corral.v1.MemoryService")
        assert {m.name for m in service.methods} == {
            "AppendEvents",
            "ListEvents",
            "Search",
            "PutNote",
            "GetNote",
            "ListNotes",
        }
