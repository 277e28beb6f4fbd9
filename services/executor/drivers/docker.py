"""The docker driver: one hardened container per task, steps run by the in-sandbox agent.

Each sandbox is a container of the sandbox image (sandbox/Dockerfile, built by
scripts/build-images) running as uid 1000 with every capability dropped, no-new-privileges,
a read-only root filesystem (tmpfs /tmp and /run), pids / memory (no swap) / CPU limits and
network `none` unless the task asks for network. The Docker socket is never mounted in it.
The task directory is bind-mounted at /tasks/{task_id}, the container's working directory.

The container's main process is the step agent (sandbox/runtime/agent.py, under the syscall
filter's loader as init: seccomp.LOADER);
DockerTransport carries its bytes over the container's attached stdin/stdout (one hijacked Docker
API connection, multiplexed stdout/stderr frames), so a step costs neither a container start nor
a `docker exec`; AgentSandbox (agent_sandbox.py) speaks the agent protocol over it. StdinOnce
makes Docker close the agent's stdin when that connection drops (the executor died): the agent
then exits and the container stops; labels
(corral.executor=<executor id>) let the executor remove such leftovers when it starts again.

A warm pool (CORRAL_DOCKER_WARM_POOL) keeps started containers ready; see warm_pool.py.

With Docker's cgroupfs driver every container is created under one parent cgroup of this
executor (`cgroup_parent`, made by services/executor/cgroups.py at the top of each hierarchy,
where dockerd places containers), whose pids.max is the executor's budget: the sum of the
containers cannot exhaust the host's pids. (Docker's systemd driver names slices instead; there
the containers keep their own limits only, and limits_description says so.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from corral import agent_protocol as protocol
from corral.config import Settings
from corral.network_rules import NetworkRules
from services.executor import task_fs
from services.executor.cgroups import Cgroup, ExecutorCgroups, make_executor_cgroups
from services.executor.drivers import seccomp
from services.executor.drivers.agent_sandbox import AgentSandbox
from services.executor.drivers.base import (
    MIB,
    RUN_DIR,
    SANDBOX_GID,
    SANDBOX_PATH,
    SANDBOX_UID,
    WORKSPACE_DIR,
    Sandbox,
    SandboxConfig,
    SandboxDriver,
    SandboxError,
    SandboxLimits,
    make_sandbox_dir,
)
from services.executor.drivers.container_init import ContainerInit, container_init, init_from_cgroup
from services.executor.drivers.faults import out_of_memory, pid_budget_used_up
from services.executor.drivers.transport import Transport
from services.executor.drivers.warm_pool import (
    WARM_DIR,
    WarmPool,
    recover_task_dirs,
)
from services.executor.network.docker_net import ContainerEgress, DockerNetwork, NetworkUnavailable
from services.executor.network.resolver import EgressStats
from services.executor.network.status import NetworkStatus

log = structlog.get_logger()

READY_TIMEOUT = 60.0
# A stopped container is removed this long after its end: the removal (~20 ms of dockerd's CPU,
# a few of this process's) then lands after the task's `finished`, not beside it. (Not from a
# niced thread: one holding the GIL while starved of CPU would stall the event loop.)
REMOVE_DELAY_SECONDS = 0.3
LABEL_EXECUTOR = "corral.executor"
LABEL_TASK = "corral.task"
LABEL_POOL = "corral.pool"
# Docker's multiplexed stream ids.
STDOUT_FRAME, STDERR_FRAME = 1, 2


def docker_client(timeout: float = 120) -> Any:
    """A docker SDK client from the environment (DOCKER_HOST or the local socket)."""
    import docker  # imported here: the bubblewrap-only executor does not need the SDK loaded

    return docker.from_env(timeout=int(timeout))


class DockerDriver(SandboxDriver):
    name = "docker"

    def __init__(self, settings: Settings) -> None:
        import docker.errors

        self.settings = settings
        self.image = settings.docker_image
        try:
            self.client = docker_client()
            self.api = self.client.api
            self.api.ping()
        except docker.errors.DockerException as exc:
            raise SandboxError(f"the docker driver cannot reach a Docker engine: {exc}") from exc
        try:
            image = self.api.inspect_image(self.image)
        except docker.errors.ImageNotFound:
            raise SandboxError(
                f"the sandbox image {self.image} is missing; build it with scripts/build-images"
            ) from None
        # Corral's syscall filter, installed by the container's first process on top of
        # Docker's default profile (see seccomp.py), which is then its init in place of the
        # image's entrypoint (tini); the image's CMD is given again (a new entrypoint clears it).
        self.entrypoint = seccomp.docker_entrypoint(
            seccomp.sandbox_filter(settings), list(image["Config"].get("Entrypoint") or [])
        )
        self.command = list(image["Config"].get("Cmd") or [])
        # The image's own command is its agent (the compiled one, from scripts/build-images),
        # unless the setting picks one.
        # gVisor's loader cannot run an execute-only program (the compiled agent's helper runs
        # on one, corral-python3: "failed to load ...: permission denied"): there, auto is the
        # Python agent.
        gvisor = settings.docker_runtime == "runsc"
        if settings.sandbox_agent == "python" or (settings.sandbox_agent == "auto" and gvisor):
            self.command = list(protocol.AGENT_COMMAND)
        elif settings.sandbox_agent == "compiled":
            self.command = list(protocol.COMPILED_AGENT_COMMAND)
        self.executor_id = ""
        self.cgroups: ExecutorCgroups | None = None
        self.cgroup_parent: str | None = None
        self.limits_description = "cgroup per container (memory and pids); executor budget not set up yet"
        self._removals: set[asyncio.Future[None]] = set()
        self._remover = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corral-docker-remove")
        try:
            self.network = DockerNetwork(settings, self.api)
        except NetworkUnavailable as exc:
            raise SandboxError(str(exc)) from None
        # A container's processes are killed through its init's pidfd (container_init.py)
        # where the init is a process of this kernel: runc, not gVisor.
        runtime = settings.docker_runtime or str(self.api.info().get("DefaultRuntime", ""))
        self.kills_by_pid = runtime == "runc"
        self.pool: WarmPool[DockerSandbox] = WarmPool(
            settings.docker_warm_pool,
            self._start_warm,
            what="container",
            driver=self.name,
            refill_when_quiet=True,
        )

    # --- executor lifecycle ------------------------------------------------------------------

    async def start(self, executor_id: str) -> None:
        self.executor_id = executor_id
        removed = await asyncio.to_thread(self.remove_containers)
        if removed:
            log.warning("removed containers a previous run of this executor left", count=removed)
        self.setup_budget(executor_id)
        await self.network.start(executor_id)
        self.limits_description += f"; {self.network.description}"
        recover_task_dirs(self.settings.tasks_dir, self.task_fs)
        self.pool.start()

    async def stop(self) -> None:
        await self.pool.stop()
        for removal in self._removals:
            removal.cancel()  # the ones still waiting: remove_containers does them
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)
        # One under way goes on in its thread: until it is done (Docker refuses a second
        # removal of a container being removed: 409).
        await asyncio.get_running_loop().run_in_executor(self._remover, lambda: None)
        # The executor's tasks have ended; anything still labelled ours (a container whose
        # creation was interrupted, say) goes too.
        if self.executor_id:
            await asyncio.to_thread(self.remove_containers)
        await self.network.stop()
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.remove)

    def setup_budget(self, executor_id: str) -> None:
        """The executor's parent cgroup for its containers (see the module docstring)."""
        per_container = "cgroup per container (memory and pids)"
        cgroup_driver = str(self.api.info().get("CgroupDriver", ""))
        if cgroup_driver != "cgroupfs":
            reason = f"Docker's cgroup driver is {cgroup_driver or 'unknown'}, not cgroupfs"
            log.warning("no executor-wide pid budget for containers", reason=reason)
            self.limits_description = f"{per_container}; no executor budget: {reason}"
            return
        self.cgroups, words = make_executor_cgroups(self.settings, executor_id, at_root=True)
        if self.cgroups is None:
            log.warning("no executor-wide pid budget for containers", reason=words)
            self.limits_description = f"{per_container}; no executor budget: {words}"
            return
        # Docker's cgroupfs driver takes the parent as a path from each hierarchy's top.
        self.cgroup_parent = "/" + self.cgroups.parent.paths[0].name
        self.limits_description = f"{per_container}; {words}"

    def remove_containers(self) -> int:
        """Removes every container labelled with this executor's id; returns how many."""
        import docker.errors

        found = self.api.containers(all=True, filters={"label": f"{LABEL_EXECUTOR}={self.executor_id}"})
        for container in found:
            try:
                self.api.remove_container(container["Id"], force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: being removed already
                    raise
        return len(found)

    async def _start_warm(self) -> DockerSandbox:
        """A container for the warm pool: default limits, no network, its own slot at /tasks."""
        settings = self.settings
        slot = settings.tasks_dir / WARM_DIR / uuid.uuid4().hex[:16]
        slot.parent.mkdir(parents=True, exist_ok=True)
        if not await self._attach_slot_fs(slot):
            slot.mkdir(mode=0o755)
        os.chmod(slot, 0o755)
        config = SandboxConfig(
            task_id="",
            host_task_dir=slot,
            limits=SandboxLimits.resolve(self.settings),
        )
        transport = DockerTransport(
            self, config, mounts={self.host_path(slot): "/tasks"}, workdir="/tasks", labels={LABEL_POOL: "warm"}
        )
        sandbox = AgentSandbox(transport, config, warm_slot=slot)
        # On failure close() removes the slot too (release_slot, nothing claimed).
        return await sandbox.start_or_close()

    async def _attach_slot_fs(self, slot: Path) -> bool:
        """task_fs.attach in a thread (mkfs and mount took the event loop, a running task's
        events with it, for tens of ms); a pool stopping meanwhile leaves no mount behind."""
        filesystems = self.task_fs
        if filesystems is None:
            return False
        attaching = asyncio.ensure_future(asyncio.to_thread(filesystems.attach, slot, self.settings.sandbox_disk_mb))
        try:
            return await asyncio.shield(attaching)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                if await attaching:
                    await asyncio.to_thread(task_fs.discard, slot)
            raise

    # --- sandboxes ---------------------------------------------------------------------------

    def prepare_task_dir(self, path: Path) -> None:
        if os.geteuid() == 0:
            # No user namespace: the container's uid 1000 is the host's uid 1000.
            make_sandbox_dir(path, (SANDBOX_UID, SANDBOX_GID), 0o755)
        elif os.geteuid() != SANDBOX_UID:
            make_sandbox_dir(path, None, 0o777)  # we cannot chown to the sandbox user; let it write
        else:
            make_sandbox_dir(path, None, 0o755)

    def disk_fs_blocker(self) -> str:
        if self.settings.docker_tasks_host_dir is not None:
            return "CORRAL_DOCKER_TASKS_HOST_DIR is set: the Docker host cannot see this executor's mounts"
        if not _sees_our_mounts(self.settings.data_dir):
            return "the Docker engine runs elsewhere and the data directory is not a shared mount (rshared)"
        return ""

    def host_path(self, path: Path) -> str:
        """`path` (under tasks_dir, as this process sees it) as the Docker host sees it."""
        host_root = self.settings.docker_tasks_host_dir
        if host_root is None:
            return str(path)
        if not path.is_relative_to(self.settings.tasks_dir):
            # A long-lived sandbox's /tasks or a run directory: only tasks_dir is translated.
            raise SandboxError(
                f"{path} is outside tasks_dir, and CORRAL_DOCKER_TASKS_HOST_DIR only says where "
                "tasks_dir is on the Docker host: desktops and long-lived sandboxes need the "
                "executor's data directory at the same path on the Docker host (as in "
                "deploy/docker-compose.yml), with CORRAL_DOCKER_TASKS_HOST_DIR unset"
            )
        return str(host_root / path.relative_to(self.settings.tasks_dir))

    def is_default(self, config: SandboxConfig) -> bool:
        """Whether a warm container (default limits, no network) fits this sandbox."""
        return (
            not config.network
            and not config.desktop
            and not config.shared_tasks
            and config.host_run_dir is None
            and config.limits.memory_mb == self.settings.sandbox_memory_mb
            and config.limits.max_processes == self.settings.sandbox_max_processes
            and (
                self.task_fs is None
                or not self.task_fs.enabled
                or config.limits.disk_mb == self.settings.sandbox_disk_mb
            )
        )

    async def claim_warm(self, config: SandboxConfig) -> Sandbox | None:
        return await self.pool.claim(config, self.prepare_task_dir) if self.is_default(config) else None

    async def create(self, config: SandboxConfig) -> Sandbox:
        if config.network and self.network.blocker:
            raise SandboxError(f"this executor cannot give sandboxes network: {self.network.blocker}")
        mounts = {self.host_path(config.host_task_dir): config.task_dir}
        if config.host_run_dir is not None:
            # The unix sockets of the desktop and Jupyter (on the /run tmpfs's mount point).
            mounts[self.host_path(config.host_run_dir)] = RUN_DIR
        if config.host_workspace_dir is not None:
            mounts[self.host_path(config.host_workspace_dir)] = WORKSPACE_DIR
        transport = DockerTransport(
            self, config, mounts=mounts, workdir=config.task_dir, labels={LABEL_TASK: config.task_id}
        )
        sandbox = AgentSandbox(transport, config)
        return await sandbox.start_or_close()

    def create_container(
        self, config: SandboxConfig, mounts: dict[str, str], workdir: str, labels: dict[str, str]
    ) -> str:
        """Creates (does not start) a hardened sandbox container; returns its id."""
        import docker.types

        limits, s = config.limits, self.settings
        binds = {source: {"bind": target, "mode": "rw"} for source, target in mounts.items()}
        network: dict[str, Any] = {"network_mode": "none"}
        if config.network:
            # Corral's network and resolver (docker_net.py); the resolv.conf naming only it
            # replaces Docker's, which would name its embedded resolver.
            network = self.network.container_options()
            binds[self.host_path(self.network.resolv_conf)] = {"bind": "/etc/resolv.conf", "mode": "ro"}
        host_config = self.api.create_host_config(
            binds=binds,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs={
                "/tmp": f"rw,exec,nosuid,nodev,size={s.sandbox_tmp_size_mb}m,mode=1777",
                "/run": "rw,noexec,nosuid,nodev,size=16m,mode=755",
            },
            shm_size=f"{s.sandbox_shm_size_mb}m",
            pids_limit=limits.max_processes,
            mem_limit=limits.memory_mb * MIB,
            memswap_limit=limits.memory_mb * MIB,  # equal: no swap on top of the memory limit
            nano_cpus=int(s.sandbox_cpus * 1e9),
            **network,
            ipc_mode="private",
            ulimits=[docker.types.Ulimit(name="core", soft=0, hard=0)],
            # The attached stream is the agent's channel: no log of it (the json-file driver
            # had dockerd encode and write every protocol message to the host's disk, unbounded).
            log_config=docker.types.LogConfig(type=docker.types.LogConfig.types.NONE),
            cgroup_parent=self.cgroup_parent,
            runtime=s.docker_runtime or None,
        )
        created = self.api.create_container(
            self.image,
            user=f"{SANDBOX_UID}:{SANDBOX_GID}",
            entrypoint=self.entrypoint,
            command=self.command,
            hostname="sandbox",
            working_dir=workdir,
            environment={"LANG": "C.UTF-8", "PATH": SANDBOX_PATH, "HOME": workdir},
            labels={LABEL_EXECUTOR: self.executor_id, **labels},
            # Attached stdin, closed by Docker when our connection goes (StdinOnce).
            stdin_open=True,
            detach=False,
            tty=False,
            host_config=host_config,
            name=f"corral-{uuid.uuid4().hex[:12]}",
            use_config_proxy=False,
        )
        return str(created["Id"])

    def kill_container(self, container_id: str) -> None:
        """SIGKILLs the container and waits until it has stopped (so no process is left)."""
        import docker.errors

        try:
            self.api.kill(container_id)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            pass  # not running (never started, or already stopped)
        try:
            self.api.wait(container_id, timeout=30)
        except docker.errors.NotFound:
            return
        except Exception as exc:
            log.warning("a sandbox container did not stop; removing it", container=container_id, error=str(exc))
            with contextlib.suppress(docker.errors.DockerException):
                self.api.remove_container(container_id, force=True, v=True)

    def remove_later(self, container_id: str) -> None:
        """Removes a stopped container in the background, REMOVE_DELAY_SECONDS later (stop()
        removes the ones still waiting)."""

        def remove() -> None:
            import docker.errors

            try:
                self.api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.DockerException as exc:
                log.warning("could not remove a sandbox container", container=container_id, error=str(exc))

        async def remove_after_delay() -> None:
            await asyncio.sleep(REMOVE_DELAY_SECONDS)
            # On a thread of their own: in the default pool, a burst of removals delayed the
            # threads the next tasks' starts and ends wait for.
            await asyncio.get_running_loop().run_in_executor(self._remover, remove)

        task = asyncio.ensure_future(remove_after_delay())
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    def describe_exit(self, container_id: str, config: SandboxConfig) -> str:
        """Why a container's agent is gone, from the container's state."""
        import docker.errors

        try:
            state = self.api.inspect_container(container_id)["State"]
        except docker.errors.DockerException:
            return "the sandbox container is gone"
        if state.get("OOMKilled"):
            return f"the sandbox was killed: {out_of_memory(config.limits)}"
        if state.get("Running"):
            return "the sandbox agent's connection closed"
        return f"the sandbox container exited with code {state.get('ExitCode')}"


def _sees_our_mounts(path: Path) -> bool:
    """Whether the Docker engine sees mounts this process makes at `path`: it runs in our mount
    namespace (a dockerd process is visible here and shares it), or the mount holding `path` is
    shared (e.g. an `rshared` bind of the data directory into the executor's container)."""
    ours = os.stat("/proc/self/ns/mnt").st_ino
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd":
                return os.stat(f"/proc/{pid}/ns/mnt").st_ino == ours
    best, shared = -1, False
    target = str(path.resolve())
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split(" - ")[0].split()
            point = fields[4]
            if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > best:
                best, shared = len(point), any(field.startswith("shared:") for field in fields[6:])
    return shared


class DockerTransport(Transport):
    """One container: the agent is its main process; bytes flow over its attached stdin and
    (demultiplexed) stdout, one hijacked Docker API connection."""

    what = "the sandbox container"
    ready_timeout = READY_TIMEOUT
    cgroup_limits = True

    def __init__(
        self,
        driver: DockerDriver,
        config: SandboxConfig,
        mounts: dict[str, str],
        workdir: str,
        labels: dict[str, str],
    ) -> None:
        super().__init__(config)
        self.driver = driver
        self.tmp_size_mb = driver.settings.sandbox_tmp_size_mb
        self.mounts, self.workdir, self.labels = mounts, workdir, labels
        self.container_id: str | None = None
        self._socket_holder: Any = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._stderr_tail = b""
        self._killed = False
        self.egress: ContainerEgress | None = None
        self._init: ContainerInit | None = None

    async def start(self) -> None:
        import docker.errors

        driver = self.driver
        try:
            creating = asyncio.ensure_future(
                asyncio.to_thread(driver.create_container, self.config, self.mounts, self.workdir, self.labels)
            )
            try:
                self.container_id = await asyncio.shield(creating)
            except asyncio.CancelledError:
                # Learn the id anyway, so that kill() removes the container.
                with contextlib.suppress(Exception):
                    self.container_id = await creating
                raise
            raw, self._socket_holder = await asyncio.to_thread(self._attach)
            await asyncio.to_thread(driver.api.start, self.container_id)
            if driver.kills_by_pid and not self.config.network:
                # The init from the container's cgroup: no inspection (a Docker API call).
                self._init = init_from_cgroup(self._procs_files(), self.container_id)
            if self._init is None and (driver.kills_by_pid or self.config.network):
                # One inspect after the start answers both: the init's pid (for kill) and the
                # address (for the network rules).
                info = await asyncio.to_thread(driver.api.inspect_container, self.container_id)
                if driver.kills_by_pid:
                    self._init = container_init(info, self.container_id)
                if self.config.network:
                    await self._attach_network(info)
        except docker.errors.DockerException as exc:
            budget = driver.cgroups
            if budget is not None and budget.nearly_used_up():
                raise SandboxError(
                    f"could not start the sandbox container: {pid_budget_used_up(budget.max_pids)}"
                ) from exc
            raise SandboxError(f"could not start the sandbox container: {exc}") from exc
        self._reader, self._writer = await asyncio.open_connection(sock=raw, limit=1024 * 1024)

    async def _attach_network(self, info: dict[str, Any]) -> None:
        """Puts the started container's address (from its inspection) under its rules: until
        then the host's table refuses every packet from it (an unknown source)."""
        name = self.driver.network.net.name
        address = ((info.get("NetworkSettings") or {}).get("Networks") or {}).get(name, {}).get("IPAddress")
        if not address:
            raise SandboxError(f"the sandbox container has no address on the docker network {name}")
        callback = self.config.on_network_refused
        stats = EgressStats(on_refused=None if callback is None else lambda n: callback(f"lookup of {n} refused"))
        try:
            self.egress = await self.driver.network.attach(address, self.config.network_rules, stats)
        except (NetworkUnavailable, RuntimeError) as exc:
            raise SandboxError(f"could not apply the sandbox's network rules: {exc}") from exc

    async def update_network(self, rules: NetworkRules) -> None:
        if self.egress is None:
            await super().update_network(rules)
            return
        try:
            await self.egress.update(rules)
        except RuntimeError as exc:
            raise SandboxError(f"could not apply the sandbox's new network rules: {exc}") from exc

    async def network_status(self) -> NetworkStatus:
        if self.egress is None:
            return await super().network_status()
        return await self.egress.status()

    def _attach(self) -> tuple[socket.socket, Any]:
        params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        holder = self.driver.api.attach_socket(self.container_id, params=params)
        # The SDK hands a SocketIO over the hijacked HTTP connection; asyncio wants the socket.
        raw = getattr(holder, "_sock", holder)
        if not isinstance(raw, socket.socket):
            raise SandboxError(f"unexpected attach socket type {type(raw).__name__}")
        return raw, holder

    async def read(self) -> bytes:
        """Demultiplexes Docker's attach stream: 8-byte headers (stream id, size), payloads;
        stdout payloads are the agent's, stderr is kept (its tail) for death_reason()."""
        assert self._reader is not None
        try:
            while True:
                header = await self._reader.readexactly(8)
                size = int.from_bytes(header[4:8], "big")
                payload = await self._reader.readexactly(size) if size else b""
                if header[0] == STDOUT_FRAME and payload:
                    return payload
                if header[0] == STDERR_FRAME:
                    self._stderr_tail = (self._stderr_tail + payload)[-4096:]
        except (asyncio.IncompleteReadError, ConnectionError):
            return b""

    async def write(self, data: bytes) -> None:
        if self._writer is None:
            raise SandboxError("the sandbox is not started")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise SandboxError("the sandbox agent's connection closed") from exc

    async def kill(self) -> None:
        if self._killed:
            return
        self._killed = True
        if self.egress is not None:
            # While the container still holds its address (Docker may hand it out again).
            try:
                await self.driver.network.detach(self.egress)
            except RuntimeError as exc:
                self.log.warning("could not remove a sandbox's network rules", error=str(exc))
        if self._init is not None and await self._init.kill():
            # Every process is gone: Docker's own stop and the removal can happen later,
            # off the task's path (~150 ms of API calls on a loaded host).
            assert self.container_id is not None
            self.driver.remove_later(self.container_id)
        elif self.container_id is not None:
            await asyncio.to_thread(self.driver.kill_container, self.container_id)
            # Every process is gone now; deleting the container's files can happen later.
            self.driver.remove_later(self.container_id)
        if self._writer is not None:
            self._writer.close()
        if self._init is not None:
            self._init.close()

    def _procs_files(self) -> list[Path]:
        """The container's `cgroup.procs` files, where Docker's cgroupfs driver puts it
        (named by its id, under the executor's parent); none without that parent."""
        budget = self.driver.cgroups
        if budget is None or self.container_id is None:
            return []
        return [path / self.container_id / "cgroup.procs" for path in budget.parent.paths]

    def pid_budget_hit(self) -> int:
        budget = self.driver.cgroups
        if budget is None or self.container_id is None:
            return 0
        # Docker's cgroupfs driver names the container's cgroup by its id, under the parent.
        own = Cgroup(budget.parent.version, {c: d / self.container_id for c, d in budget.parent.dirs.items()})
        return 0 if own.reached_own_pids_max() else budget.max_pids

    async def death_reason(self) -> str:
        message = "the sandbox ended unexpectedly"
        if self.container_id is not None:
            message = await asyncio.to_thread(self.driver.describe_exit, self.container_id, self.config)
        detail = self._stderr_tail.decode("utf-8", "replace").strip()
        if detail:
            message += f": {detail[-500:]}"
        return message


# A docker sandbox: the one agent client over a container transport.
DockerSandbox = AgentSandbox[DockerTransport]
