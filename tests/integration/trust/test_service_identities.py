"""The attacks on Corral's internal gRPC services (issue 9), made by a process on the same host
with nothing but grpc's Python client and, where it has one, a certificate: each is refused
with the right status code, and the legitimate path still works.

Real memory, scheduler and executor processes, each with its certificate from the cluster's
own CA (tests/harness.py). Before the services spoke TLS with per-RPC roles, every call here
succeeded: RunTask ran code, RegisterExecutor as "executor" moved its work to the attacker's
address, Heartbeat kept a frozen executor alive, AppendEvents stored forged history.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import Cluster, cluster, require_docker

from corral.grpc_server import CHANNEL_OPTIONS
from corral.internal.v1 import executor_pb2, executor_pb2_grpc, registry_pb2, registry_pb2_grpc
from corral.pki import CA, create_ca
from corral.schema import TaskRequest
from corral.v1 import (
    memory_pb2,
    memory_pb2_grpc,
    sandbox_pb2,
    sandbox_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)
from corral.v1 import sandbox_calls_pb2 as calls_pb2


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data_dir = tmp_path_factory.mktemp("trust")
    data_dir.chmod(0o755)  # the sandbox user reaches the tasks directory
    with cluster(data_dir, "memory", "scheduler", "executor") as c:
        with c.channel(c.scheduler_address) as admin:
            wait_until(lambda: bool(executors(admin)), "the executor registered")
        yield c


def wait_until(condition: Callable[[], bool], what: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def executors(channel: grpc.Channel) -> dict[str, registry_pb2.ExecutorInfo]:
    stub = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
    return {e.executor_id: e for e in stub.ListExecutors(registry_pb2.ListExecutorsRequest()).executors if e.alive}


def no_certificate(system: Cluster, address: str) -> grpc.Channel:
    """TLS that trusts the deployment's CA but presents no certificate of its own."""
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=system.ca_cert))


def foreign_ca_certificate(system: Cluster, address: str, role: str) -> grpc.Channel:
    """A certificate naming `role`, from a CA the attacker made itself."""
    directory = system.data_dir / "attacker" / "ca"
    own = CA.load(directory) if directory.exists() else create_ca(directory)  # one attacker CA per module
    cert, key = own.issue(role, role)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=system.ca_cert, private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(address, credentials)


def certificate_without_identity(system: Cluster, address: str) -> grpc.Channel:
    """A certificate from the deployment's CA that names no Corral role (no SPIFFE id)."""
    ca = CA.load(system.pki_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scheduler")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=system.ca_cert,
        private_key=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        certificate_chain=cert.public_bytes(serialization.Encoding.PEM),
    )
    return grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, bytes):
            list(result)  # a streaming call fails when read
    return caught.value


def echo_spec(command: str) -> task_pb2.TaskSpec:
    return TaskRequest.model_validate({"steps": [{"tool": "shell", "command": command}]}).to_proto()


# --- the executor: RunTask and CancelTask only from the scheduler ---------------------------


def run_task(channel: grpc.Channel, task_id: str) -> Callable[[], object]:
    stub = executor_pb2_grpc.ExecutorServiceStub(channel)
    request = executor_pb2.RunTaskRequest(task_id=task_id, spec=echo_spec("echo pwned > pwned.txt"))
    return lambda: stub.RunTask(request, timeout=10)


def test_run_task_without_a_certificate_is_refused_at_the_handshake(system: Cluster) -> None:
    for name, channel in {
        "no certificate": no_certificate(system, system.executor_address),
        "plaintext": grpc.insecure_channel(system.executor_address),
        "another CA's scheduler": foreign_ca_certificate(system, system.executor_address, "scheduler"),
    }.items():
        with channel:
            error = refused(run_task(channel, f"attack-{name.replace(' ', '-')}"))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (name, error)
    assert not list((system.data_dir / "tasks").glob("attack-*"))  # nothing ran


def test_run_task_with_a_certificate_naming_no_role_is_unauthenticated(system: Cluster) -> None:
    with certificate_without_identity(system, system.executor_address) as channel:
        error = refused(run_task(channel, "attack-anonymous"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "RunTask needs a client certificate from this deployment's CA (role scheduler)" in (error.details() or "")
    assert not (system.data_dir / "tasks" / "attack-anonymous").exists()


@pytest.mark.parametrize("role", ["gateway", "executor", "memory", "admin"])
def test_run_task_from_another_role_is_permission_denied(system: Cluster, role: str) -> None:
    with system.channel(system.executor_address, role) as channel:
        error = refused(run_task(channel, f"attack-{role}"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "ExecutorService/RunTask is for role scheduler; the caller is " + role in (error.details() or "")
    assert not (system.data_dir / "tasks" / f"attack-{role}").exists()


def test_cancel_through_the_executor_is_refused_and_the_task_runs_on(system: Cluster) -> None:
    with system.channel(system.scheduler_address) as admin:
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(admin)
        task_id = scheduler.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=echo_spec("echo up; sleep 60"))).task_id

        def state() -> int:
            return int(scheduler.GetTask(scheduler_pb2.GetTaskRequest(task_id=task_id)).task.state)

        wait_until(lambda: state() == task_pb2.TASK_STATE_RUNNING, "the task runs")
        for role in ("gateway", "admin", "executor"):
            with system.channel(system.executor_address, role) as channel:
                stub = executor_pb2_grpc.ExecutorServiceStub(channel)
                error = refused(partial(stub.CancelTask, executor_pb2.CancelTaskRequest(task_id=task_id), timeout=10))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, role
        with no_certificate(system, system.executor_address) as channel:
            stub = executor_pb2_grpc.ExecutorServiceStub(channel)
            error = refused(lambda: stub.CancelTask(executor_pb2.CancelTaskRequest(task_id=task_id), timeout=10))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert state() == task_pb2.TASK_STATE_RUNNING
        # The legitimate path: the scheduler, asked by the admin, cancels it through the executor.
        scheduler.CancelTask(scheduler_pb2.CancelTaskRequest(task_id=task_id))
        wait_until(lambda: state() == task_pb2.TASK_STATE_CANCELLED, "the task is cancelled")


# --- the registry: executors register and heartbeat only as themselves -----------------------


# --- the executor: a sandbox's calls only from the scheduler and the gateway ------------------


def test_sandbox_calls_straight_to_the_executor_need_the_gateway_or_scheduler_role(system: Cluster) -> None:
    """The gateway sends a sandbox's quick calls straight to its executor (gateway/call_routes.py):
    any other caller of those RPCs is refused, and nothing runs in the sandbox."""
    with system.channel(system.scheduler_address) as admin:
        sandboxes = sandbox_pb2_grpc.SandboxServiceStub(admin)
        sandbox_id = sandboxes.CreateSandbox(sandbox_pb2.CreateSandboxRequest(), timeout=60).sandbox.sandbox_id

        def command(channel: grpc.Channel, code: str) -> Callable[[], object]:
            call = calls_pb2.RunSandboxCommandRequest(sandbox_id=sandbox_id, command=calls_pb2.SandboxCommand(tool="shell", code=code))
            return lambda: executor_pb2_grpc.ExecutorServiceStub(channel).RunCommand(executor_pb2.RunCommandRequest(call=call), timeout=30)

        def stat(channel: grpc.Channel, path: str) -> Callable[[], object]:
            call = calls_pb2.OperateSandboxFileRequest(sandbox_id=sandbox_id, stat=path)
            return lambda: executor_pb2_grpc.ExecutorServiceStub(channel).OperateFile(executor_pb2.OperateFileRequest(call=call), timeout=30)

        try:
            for name, channel in {
                "no certificate": no_certificate(system, system.executor_address),
                "another CA's gateway": foreign_ca_certificate(system, system.executor_address, "gateway"),
            }.items():
                with channel:
                    assert refused(command(channel, "touch pwned-tls")).code() == grpc.StatusCode.UNAVAILABLE, name
            with certificate_without_identity(system, system.executor_address) as channel:
                assert refused(command(channel, "touch pwned-anon")).code() == grpc.StatusCode.UNAUTHENTICATED
            for role in ("executor", "memory", "admin"):
                with system.channel(system.executor_address, role) as channel:
                    for call in (command(channel, f"touch pwned-{role}"), stat(channel, ".")):
                        error = refused(call)
                        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (role, error)
                        assert "is for role gateway or scheduler; the caller is " + role in (error.details() or "")
            # The gateway's role gets through (the scheduler routed its caller's key to the sandbox).
            with system.channel(system.executor_address, "gateway") as channel:
                reply = command(channel, "ls pwned-* 2>&1; echo listed")()
                assert isinstance(reply, executor_pb2.RunCommandResponse)
                assert reply.reply.event.exit.stdout.endswith("listed\n"), reply
                assert "pwned-" not in reply.reply.event.exit.stdout.replace("pwned-*", "")
        finally:
            sandboxes.DeleteSandbox(sandbox_pb2.DeleteSandboxRequest(sandbox_id=sandbox_id), timeout=60)


def test_rogue_registration_and_hijacking_are_refused(system: Cluster) -> None:
    victim = system.executor_ids["executor"]
    hijack = registry_pb2.RegisterExecutorRequest(
        executor_id=victim, address="127.0.0.1:1", capacity=100, driver="bubblewrap"
    )
    with no_certificate(system, system.scheduler_address) as channel:
        stub = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
        assert refused(lambda: stub.RegisterExecutor(hijack, timeout=10)).code() == grpc.StatusCode.UNAVAILABLE
    # An executor's certificate is for its own id only.
    with system.channel(system.scheduler_address, "executor", "impostor") as channel:
        stub = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
        error = refused(lambda: stub.RegisterExecutor(hijack, timeout=10))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"executor 'impostor' may act only as itself, not as executor_id {victim!r}" in (error.details() or "")
    for role in ("gateway", "admin", "scheduler", "memory"):
        with system.channel(system.scheduler_address, role) as channel:
            stub = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
            error = refused(partial(stub.RegisterExecutor, hijack, timeout=10))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, role
        assert "RegisterExecutor is for role executor" in (error.details() or "")
    with system.channel(system.scheduler_address) as admin:
        assert executors(admin)[victim].address == system.executor_address  # not the attacker's


def test_spoofed_heartbeats_are_refused(system: Cluster) -> None:
    beat = registry_pb2.HeartbeatRequest(executor_id=system.executor_ids["executor"])
    with system.channel(system.scheduler_address, "executor", "impostor") as channel:
        stub = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
        error = refused(lambda: stub.Heartbeat(beat, timeout=10))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may act only as itself" in (error.details() or "")
    with system.channel(system.scheduler_address, "gateway") as channel:
        stub = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
        assert refused(lambda: stub.Heartbeat(beat, timeout=10)).code() == grpc.StatusCode.PERMISSION_DENIED
    with no_certificate(system, system.scheduler_address) as channel:
        stub = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
        assert refused(lambda: stub.Heartbeat(beat, timeout=10)).code() == grpc.StatusCode.UNAVAILABLE
    # The executor's own certificate may.
    with system.channel(system.scheduler_address, "executor", system.executor_ids["executor"]) as channel:
        stub = registry_pb2_grpc.ExecutorRegistryServiceStub(channel)
        assert stub.Heartbeat(beat, timeout=10).known


# --- memory: history written by executors, read by the gateway and the scheduler -------------


def test_forged_history_is_refused_and_reads_need_a_reader_role(system: Cluster) -> None:
    forged = memory_pb2.AppendEventsRequest(
        task_id="victim",
        events=[memory_pb2.HistoryEvent(kind=memory_pb2.HISTORY_KIND_ACTION, tool="shell", action="forged")],
    )
    for role in ("gateway", "admin", "scheduler"):
        with system.channel(system.memory_address, role) as channel:
            stub = memory_pb2_grpc.MemoryServiceStub(channel)
            error = refused(partial(stub.AppendEvents, forged, timeout=10))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, role
        assert "AppendEvents is for role executor; the caller is " + role in (error.details() or "")
    with no_certificate(system, system.memory_address) as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        assert refused(lambda: stub.AppendEvents(forged, timeout=10)).code() == grpc.StatusCode.UNAVAILABLE
        assert refused(
            lambda: stub.Search(memory_pb2.SearchRequest(query="secret"), timeout=10)
        ).code() == grpc.StatusCode.UNAVAILABLE
    # An executor writes history; it does not read every task's.
    with system.channel(system.memory_address, "executor") as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        error = refused(lambda: stub.Search(memory_pb2.SearchRequest(query="forged"), timeout=10))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "Search is for role admin, gateway or scheduler" in (error.details() or "")
    with system.channel(system.memory_address, "gateway") as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        assert not stub.ListEvents(memory_pb2.ListEventsRequest(task_id="victim"), timeout=10).events


# --- what still works ------------------------------------------------------------------------


def test_a_task_runs_end_to_end_and_its_history_is_recorded(system: Cluster) -> None:
    with system.channel(system.scheduler_address) as admin:
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(admin)
        task_id = scheduler.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=echo_spec("echo trusted"))).task_id
        events = list(scheduler.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id), timeout=60))
    assert events[-1].event.finished.state == task_pb2.TASK_STATE_COMPLETED
    with system.channel(system.memory_address, "gateway") as channel:
        memory = memory_pb2_grpc.MemoryServiceStub(channel)
        wait_until(
            lambda: any(
                e.stdout == "trusted\n"
                for e in memory.ListEvents(memory_pb2.ListEventsRequest(task_id=task_id), timeout=10).events
            ),
            "the executor recorded the step's result",
        )


@pytest.mark.parametrize("role", ["gateway", "executor", "memory", "scheduler", "admin"])
def test_health_answers_every_role(system: Cluster, role: str) -> None:
    for address in (system.scheduler_address, system.memory_address, system.executor_address):
        with system.channel(address, role) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(params=["bubblewrap", pytest.param("docker", marks=pytest.mark.docker)])
def any_driver(request: pytest.FixtureRequest, system: Cluster) -> Iterator[Cluster]:
    """The module's cluster (bubblewrap), or one whose executor runs docker sandboxes."""
    if request.param == "bubblewrap":
        yield system
        return
    require_docker()
    data_dir = system.data_dir / "docker"
    data_dir.mkdir(mode=0o755)
    with cluster(data_dir, "memory", "scheduler") as c:
        c.start_executor(CORRAL_SANDBOX_DRIVER="docker", CORRAL_DOCKER_WARM_POOL="0")
        yield c


def test_the_keys_are_out_of_a_sandboxs_reach(any_driver: Cluster) -> None:
    """A step cannot read the deployment's keys (they stay outside every sandbox's view)."""
    system = any_driver
    keys = sorted(str(p) for p in Path(system.pki_dir).glob("*.key"))
    assert keys
    with system.channel(system.scheduler_address) as admin:
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(admin)
        command = "for f in " + " ".join(keys) + '; do cat "$f" && echo READ; done; true'
        task_id = scheduler.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=echo_spec(command))).task_id
        events = list(scheduler.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id), timeout=120))
    output = "".join(e.event.output.data for e in events if e.event.HasField("output"))
    assert events[-1].event.finished.state == task_pb2.TASK_STATE_COMPLETED
    assert "READ" not in output and "PRIVATE KEY" not in output
    assert "No such file or directory" in output


# From inside a sandbox that shares the host's network (bubblewrap, "network": true), with the
# grpc the sandbox runtime ships (/app/.venv): the attacks of the issue, as raw unary calls
# (an empty request is b""), in plaintext as before mTLS.
ATTACKS = r"""
import sys, grpc
for target in sys.argv[1:]:
    address, method = target.split("=")
    try:
        grpc.insecure_channel(address).unary_unary(method)(b"", timeout=10)
        print(method, "ANSWERED")
    except grpc.RpcError as exc:
        print(method, exc.code().name)
"""


def test_a_networked_sandbox_cannot_speak_to_any_service(system: Cluster) -> None:
    """Before mTLS, a step with "network": true listed the executors, searched all history and
    ran a task through the executor directly; now no Corral port answers it."""
    targets = [
        f"{system.env['CORRAL_SCHEDULER_ADDRESS']}=/corral.internal.v1.ExecutorRegistryService/ListExecutors",
        f"{system.env['CORRAL_MEMORY_ADDRESS']}=/corral.v1.MemoryService/Search",
        f"{system.env['CORRAL_EXECUTOR_ADDRESS']}=/corral.internal.v1.ExecutorService/GetExecutorStatus",
        f"{system.env['CORRAL_EXECUTOR_ADDRESS']}=/corral.internal.v1.ExecutorService/RunCommand",
    ]
    command = "/app/.venv/bin/python -c '" + ATTACKS.replace("'", '"') + "' " + " ".join(targets)
    spec = echo_spec(command)
    spec.network = True
    with system.channel(system.scheduler_address) as admin:
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(admin)
        task_id = scheduler.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=spec)).task_id
        events = list(scheduler.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=task_id), timeout=120))
    output = "".join(e.event.output.data for e in events if e.event.HasField("output"))
    assert events[-1].event.finished.state == task_pb2.TASK_STATE_COMPLETED, output
    answers = dict(line.split() for line in output.strip().splitlines())
    assert len(answers) == 4 and set(answers.values()) == {"UNAVAILABLE"}, output
