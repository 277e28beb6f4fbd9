"""The bubblewrap driver: one long-lived `bwrap` per task, steps run by an in-sandbox agent.

The sandbox gets new user/pid/net/ipc/uts/cgroup/mount namespaces, uid 1000, read-only system
directories, a fresh /proc and /dev, a private /tmp, the task directory read-write at
/tasks/{task_id} and the runtime read-only at /app. Its command is sandbox/runtime/agent.py,
which runs each step. This module is only the isolation: BubblewrapTransport starts bwrap and
carries bwrap's stdin/stdout, kills the namespace, and keeps bwrap's last words; AgentSandbox
(agent_sandbox.py) speaks the agent protocol over it.

When the executor runs as root, bwrap's user namespace would map the sandbox user to host root
and make root-only files under the read-only binds (/etc/shadow) readable; so bwrap is started
as an unprivileged host uid instead. That uid must be able to reach the task and runtime
directories, which it cannot when they live under, say, /root (0700): bwrap resolves bind
sources as its caller. In that case bwrap is started inside a private mount namespace where
root first bind-mounts both directories onto world-searchable staging paths. An executor that
is not root (deploy/Dockerfile.executor-bwrap's) starts bwrap as itself, so its sandboxes own
its files: it refuses to start while its TLS key lies where they can see it (/etc, /usr, /app).

A warm pool (CORRAL_BWRAP_WARM_POOL, see warm_pool.py) keeps sandboxes started ahead of tasks,
each with an empty slot directory at /tasks; a task without network, desktop or long-lived
sandbox claims one (AgentSandbox.claim) instead of waiting for bwrap and the agent to start.

Memory and pids are bounded per sandbox, and for all of the executor's sandboxes together, by
cgroups (services/executor/cgroups.py): bwrap is started by a shell that first writes its own
pid into the sandbox's cgroup.procs, so nothing sandboxed ever runs outside it; the cgroup's
directory is bound read-only at /sys/fs/cgroup, where the agent reads its OOM and pids counters
as it does in a container. Where no cgroup can be made, the agent's per-process rlimits stay,
and the driver's limits_description says so.

A sandbox with network gets a network namespace of its own (network/bwrap_net.py): its
nftables rules and resolver are in place, and pasta attached, before bwrap starts inside it;
it reaches the internet and nothing of the host. Where that cannot be made (not root, pasta or
nft missing) a sandbox asking for network fails, saying what is missing: never the host's
network instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import structlog

from corral import agent_protocol as protocol
from corral import errors
from corral.config import Settings
from corral.network_rules import NetworkRules
from services.executor import task_fs
from services.executor.cgroups import Cgroup, ExecutorCgroups, make_executor_cgroups, rlimit_fallback
from services.executor.drivers import seccomp
from services.executor.drivers.agent_sandbox import AgentSandbox
from services.executor.drivers.base import (
    MIB,
    RUN_DIR,
    SANDBOX_GID,
    SANDBOX_PATH,
    SANDBOX_UID,
    SOURCE_DIR,
    WORKSPACE_DIR,
    WORKSPACE_NAME,
    Sandbox,
    SandboxConfig,
    SandboxDriver,
    SandboxError,
    SandboxLimits,
    make_sandbox_dir,
    sandbox_env,
)
from services.executor.drivers.faults import out_of_memory, pid_budget_used_up
from services.executor.drivers.transport import KILL_GRACE_SECONDS, ChannelPipes, SubprocessTransport
from services.executor.drivers.warm_pool import (
    WARM_DIR,
    WarmPool,
    in_refill_thread,
    recover_task_dirs,
    remove_slot,
)
from services.executor.network import bwrap_net, netns, nft
from services.executor.network.status import NetworkStatus

log = structlog.get_logger()

SANDBOX_PYTHON = protocol.AGENT_COMMAND[0]
READY_TIMEOUT = 20.0
# The checkout holding the `corral` and `services` packages, mounted at SOURCE_DIR for the
# gui service of desktop sandboxes.
SOURCE_ROOT = Path(__file__).resolve().parents[3]
# Top-level names that are symlinks into /usr on merged-/usr systems (or real dirs elsewhere).
SYSTEM_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class BubblewrapDriver(SandboxDriver):
    name = "bubblewrap"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxError("bubblewrap is not installed (no `bwrap` on PATH); apt-get install bubblewrap")
        self.bwrap = bwrap
        self.runtime_dir = Path(settings.runtime_dir).resolve()
        if not (self.runtime_dir / "agent.py").is_file():
            raise SandboxError(f"the sandbox runtime is missing: no agent.py in {self.runtime_dir}")
        compile_runtime(self.runtime_dir)
        self.agent_command = agent_command(settings.sandbox_agent, self.runtime_dir)
        # As root, run bwrap as an unprivileged host user (see the module docstring).
        self.host_ids: tuple[int, int] | None = None
        if os.geteuid() == 0:
            uid = settings.sandbox_host_uid
            self.host_ids = (uid, uid)
        else:
            refuse_key_in_sandbox_view(settings.tls_paths("executor")[2], self.runtime_dir)
        # Staging mount points, used only when a directory is out of the sandbox uid's reach.
        self.stage_dir = Path(settings.sandbox_stage_dir)
        self.supports_disable_userns = _bwrap_supports(bwrap, "--disable-userns")
        # The syscall filter bwrap installs before exec'ing the agent (None: turned off).
        self.syscall_filter = seccomp.sandbox_filter(settings)
        # No core dumps from sandboxes: bwrap and everything in it inherit this.
        _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
        self.pool: WarmPool[BubblewrapSandbox] = WarmPool(
            settings.bwrap_warm_pool, self._start_warm, "bubblewrap sandbox", driver=self.name
        )
        self.cgroups: ExecutorCgroups | None = None
        self.limits_description = rlimit_fallback("the driver has not started")
        # Why sandboxes cannot have network here ("" when they can), and their namespaces' prefix.
        self.network_blocker = bwrap_net.network_blocker()
        self.netns_prefix = netns.executor_prefix("")
        # The uid pasta runs as (None: root, and why), decided once at start.
        self.pasta_as: tuple[int | None, str] = (None, "")

    # --- executor lifecycle ----------------------------------------------------------------

    async def start(self, executor_id: str) -> None:
        recover_task_dirs(self.settings.tasks_dir, self.task_fs)
        self.cgroups, words = make_executor_cgroups(self.settings, executor_id)
        if self.cgroups is None:
            log.warning("sandboxes fall back to per-process rlimits: they do not bound the host", reason=words)
            words = rlimit_fallback(words)
        self.netns_prefix = netns.executor_prefix(executor_id)
        if not self.network_blocker:
            stale = await asyncio.to_thread(netns.remove_stale, self.netns_prefix)
            if stale:
                log.info("removed network namespaces left by a previous run", count=len(stale))
            self.pasta_as = await bwrap_net.choose_pasta_uid(self.settings)
            if self.pasta_as[0] is None:
                log.warning("pasta runs as root for networked sandboxes", reason=self.pasta_as[1])
        self.limits_description = f"{words}; {bwrap_net.isolation_words(self.network_blocker, self.pasta_as)}"
        self.pool.start()

    async def stop(self) -> None:
        await self.pool.stop()
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.remove)

    def prepare_task_dir(self, path: Path) -> None:
        make_sandbox_dir(path, self.host_ids, 0o755)

    def needs_staging(self, config: SandboxConfig) -> bool:
        if self.host_ids is None:
            return False
        uid, gid = self.host_ids
        dirs = [config.host_task_dir, self.runtime_dir]
        if config.host_run_dir is not None:
            dirs.append(config.host_run_dir)
        if config.desktop:
            dirs.append(SOURCE_ROOT)
        return not all(_searchable_by(d, uid, gid) for d in dirs)

    def launcher(self, config: SandboxConfig, staged: bool) -> tuple[list[str], str, str]:
        """The command prefix that starts bwrap, and the task/runtime paths bwrap should bind."""
        prefix, paths = self.staged_launcher(config, staged)
        return prefix, paths["task"], paths["app"]

    def staged_launcher(self, config: SandboxConfig, staged: bool) -> tuple[list[str], dict[str, str]]:
        """Like launcher(), for every host directory the sandbox binds (task, app, run, source)."""
        sources = {"task": str(config.host_task_dir), "app": str(self.runtime_dir)}
        if config.host_run_dir is not None:
            sources["run"] = str(config.host_run_dir)
        if config.desktop:
            sources["source"] = str(SOURCE_ROOT)
        if not staged:
            return [], sources
        assert self.host_ids is not None
        uid, gid = self.host_ids
        self.stage_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        staged_paths: dict[str, str] = {}
        script = ""
        args: list[str] = []
        for n, (name, source) in enumerate(sources.items()):
            stage = self.stage_dir / name
            stage.mkdir(mode=0o755, exist_ok=True)
            staged_paths[name] = str(stage)
            script += f'mount --bind "${{{2 * n + 1}}}" "${{{2 * n + 2}}}" && '
            args += [source, str(stage)]
        # The private namespace copied every other sandbox's filesystem: it would keep their loop
        # devices busy for as long as this sandbox lives, after their own ends.
        for other in task_fs.other_sandbox_mounts(config.host_task_dir):
            args.append(str(other))
            script = f'umount --lazy "${{{len(args)}}}"; ' + script
        script += f"shift {len(args)} && exec \"$@\""
        prefix = [
            "unshare", "--mount", "--propagation", "private", "--",
            "/bin/sh", "-c", script, "corral-stage", *args,
            "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
        ]
        return prefix, staged_paths

    def fits_warm(self, config: SandboxConfig) -> bool:
        """Whether a warm sandbox can serve this config. Limits do not matter here (the claim
        sets the sandbox's cgroup to the task's, AgentSandbox.claim, or they are rlimits), but
        for the disk quota when the slot is a filesystem of its own, made at the default size."""
        return (
            not config.network
            and not config.desktop
            and not config.shared_tasks
            and config.host_run_dir is None
            and (
                self.task_fs is None
                or not self.task_fs.enabled
                or config.limits.disk_mb == self.settings.sandbox_disk_mb
            )
        )

    async def claim_warm(self, config: SandboxConfig) -> Sandbox | None:
        return await self.pool.claim(config, self.prepare_task_dir) if self.fits_warm(config) else None

    async def create(self, config: SandboxConfig) -> Sandbox:
        sandbox = self.sandbox(config)
        return await sandbox.start_or_close()

    def sandbox(self, config: SandboxConfig, warm_slot: Path | None = None) -> BubblewrapSandbox:
        """A sandbox (not started yet) of this driver."""
        return AgentSandbox(BubblewrapTransport(self, config), config, warm_slot)

    async def _start_warm(self) -> BubblewrapSandbox:
        """A sandbox for no task yet: its own empty slot at /tasks, where its agent waits."""
        slot = self.settings.tasks_dir / WARM_DIR / uuid.uuid4().hex[:16]
        making = asyncio.ensure_future(in_refill_thread(self._make_slot, slot))
        try:
            await asyncio.shield(making)
        except asyncio.CancelledError:
            # A pool stopping meanwhile leaves no slot (nor mount) behind.
            with contextlib.suppress(Exception):
                await making
                await asyncio.to_thread(remove_slot, slot)
            raise
        # shared_tasks: the slot is bound at /tasks itself (the shape of a long-lived sandbox).
        config = SandboxConfig(
            task_id="",
            host_task_dir=slot,
            limits=SandboxLimits.resolve(self.settings),
            shared_tasks=True,
        )
        sandbox = self.sandbox(config, warm_slot=slot)
        return await sandbox.start_or_close()

    def _make_slot(self, slot: Path) -> None:
        """A warm sandbox's empty slot: a filesystem of its own where one can be made."""
        slot.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self.task_fs is None or not self.task_fs.attach(slot, self.settings.sandbox_disk_mb):
            slot.mkdir(mode=0o700)
        os.chmod(slot, 0o700)
        if self.host_ids is not None:
            os.chown(slot, *self.host_ids)

    def command(
        self,
        config: SandboxConfig,
        task_src: str,
        runtime_src: str,
        info_fd: int,
        extra_sources: dict[str, str] | None = None,
        cgroup: Cgroup | None = None,
        seccomp_fd: int | None = None,
        resolv_conf_fd: int | None = None,
        channel_fds: tuple[int, int] | None = None,
    ) -> list[str]:
        args = [self.bwrap, "--unshare-all"]
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        if config.network:
            # The namespace bwrap was started in: the sandbox's own (BubblewrapTransport.start).
            args.append("--share-net")
        if self.supports_disable_userns:
            # No nested user namespaces (less kernel surface); bwrap wants the user ns explicit.
            args += ["--unshare-user", "--disable-userns"]
        args += [
            "--die-with-parent",
            "--new-session",
            "--uid", str(SANDBOX_UID),
            "--gid", str(SANDBOX_GID),
            "--hostname", "sandbox",
            "--info-fd", str(info_fd),
            "--ro-bind", "/usr", "/usr",
            "--ro-bind", "/etc", "/etc",
        ]
        for name in SYSTEM_LINKS:
            host = Path("/") / name
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), f"/{name}"]
            elif host.is_dir():
                args += ["--ro-bind", str(host), f"/{name}"]
        args += [
            "--proc", "/proc",
            # /dev, / and every tmpfs are host memory: /dev read-only with a sized /dev/shm,
            # / read-only (below), /tmp sized.
            "--dev", "/dev",
            "--size", str(self.settings.sandbox_shm_size_mb * MIB), "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev",
            "--size", str(self.settings.sandbox_tmp_size_mb * MIB), "--tmpfs", "/tmp",
            "--bind", task_src, config.task_dir,
            "--ro-bind", runtime_src, "/app",
            # The sandbox's own users (agent = 1000, as in the docker image), not the host's.
            "--ro-bind", f"{runtime_src}/etc/passwd", "/etc/passwd",
            "--ro-bind", f"{runtime_src}/etc/group", "/etc/group",
        ]
        if resolv_conf_fd is not None:
            # Corral's resolver, inside the sandbox's namespace, and no other.
            args += ["--ro-bind-data", str(resolv_conf_fd), "/etc/resolv.conf"]
        if config.workspace:
            # Made by the executor with the sandbox, before anything of the sandbox has run.
            args += ["--bind", f"{task_src}/{WORKSPACE_NAME}", WORKSPACE_DIR]
        extra = extra_sources or {}
        if "run" in extra:
            args += ["--bind", extra["run"], RUN_DIR]
        if "source" in extra:
            # Only the two packages the gui service imports, read-only.
            for package in ("corral", "services"):
                args += ["--ro-bind", f"{extra['source']}/{package}", f"{SOURCE_DIR}/{package}"]
        if cgroup is not None:
            args += cgroup_binds(cgroup)
        args += [
            # Last of the mounts: nothing more is made under the sandbox's root, and nothing
            # may be written there (bwrap's root is an unsized tmpfs).
            "--remount-ro", "/",
            "--chdir", config.task_dir,
            "--clearenv",
        ]
        for key, value in sandbox_env(config).items():
            args += ["--setenv", key, value]
        args += ["--", *self.agent_command]
        if channel_fds is not None:
            # The protocol's pipes, not bwrap's stdio: bwrap's pid 1 keeps only its stdio, and
            # runs as the steps' uid, dumpable (a step can write into its memory).
            args += ["--channel", ",".join(map(str, channel_fds))]
        return args


def sandbox_view_holding(path: Path, runtime_dir: Path) -> Path | None:
    """The directory bound into every sandbox (read-only system directories, the runtime) that
    holds `path`, or None when no sandbox sees it."""
    resolved = path.resolve()
    bound = [Path("/usr"), Path("/etc"), runtime_dir.resolve()]
    bound += [Path("/") / name for name in SYSTEM_LINKS if not (Path("/") / name).is_symlink()]
    return next((d for d in bound if resolved.is_relative_to(d)), None)


def refuse_key_in_sandbox_view(key: Path, runtime_dir: Path) -> None:
    """An executor that is not root starts bwrap as itself, so its sandboxes run as its own uid
    and can read its files: its TLS key must lie outside what they bind (e.g. not /etc/corral/),
    or any step could read it and call the scheduler as this executor."""
    holder = sandbox_view_holding(key, runtime_dir)
    if holder is not None:
        raise SandboxError(
            f"the executor's TLS key {key} is under {holder}, which every sandbox binds; not being root, "
            "the executor runs sandboxes as its own uid, so they could read it: keep the key elsewhere "
            "(CORRAL_TLS_DIR or CORRAL_TLS_KEY_FILE, e.g. under /var/run/corral)"
        )


def agent_command(choice: str, runtime_dir: Path) -> list[str]:
    """The agent's command line in a sandbox: the compiled agent where it is built (and not
    turned off by CORRAL_SANDBOX_AGENT=python), else the Python one."""
    binary = runtime_dir / protocol.COMPILED_AGENT_NAME
    built = binary.is_file() and os.access(binary, os.X_OK)
    if choice == "compiled" and not built:
        raise SandboxError(
            f"CORRAL_SANDBOX_AGENT=compiled, but there is no {binary}: build it with scripts/build-agent"
        )
    if choice == "python" or not built:
        return list(protocol.AGENT_COMMAND)
    return list(protocol.COMPILED_AGENT_COMMAND)


def compile_runtime(runtime_dir: Path) -> None:
    """The agent's bytecode, by the sandbox's own Python, next to it: /app is read-only in a
    sandbox, and compiling the agent at each start would cost more than running it. Up-to-date
    files are skipped; a read-only runtime (installed, compiled by scripts/bootstrap) is left."""
    if not os.access(runtime_dir, os.W_OK):
        return
    sources = [str(runtime_dir / name) for name in ("agent.py", "agent_protocol.py")]
    try:
        subprocess.run([SANDBOX_PYTHON, "-I", "-S", "-m", "compileall", "-q", *sources], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("sandbox_runtime_not_compiled", error=str(exc))


def cgroup_binds(cgroup: Cgroup) -> list[str]:
    """bwrap arguments showing the sandbox its own cgroup, read-only, where a container sees
    it (the agent reads its OOM and pids counters there)."""
    if cgroup.version == 2:
        return ["--ro-bind", str(cgroup.dirs["memory"]), "/sys/fs/cgroup"]
    args: list[str] = []
    for controller, path in sorted(cgroup.dirs.items()):
        args += ["--ro-bind", str(path), f"/sys/fs/cgroup/{controller}"]
    return args


def join_cgroup_prefix(cgroup: Cgroup) -> list[str]:
    """A command prefix that moves itself into `cgroup` and then execs the rest: what it
    starts (bwrap, everything in the sandbox) is in the cgroup from its first instruction.
    A write that fails ends it (exit 126), so nothing runs outside."""
    files = cgroup.procs_files
    script = "".join(f'echo $$ > "${n + 1}" && ' for n in range(len(files)))
    script += f'shift {len(files)} && exec "$@"'
    return ["/bin/sh", "-c", script, "corral-cgroup", *files]


def _bwrap_supports(bwrap: str, option: str) -> bool:
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in out.stdout + out.stderr


class BubblewrapTransport(SubprocessTransport):
    """One `bwrap` process: the agent is its command; bytes flow over pipes handed to it by
    number (ChannelPipes), not bwrap's stdio, which the sandbox's init keeps."""

    what = "the sandbox"
    ready_timeout = READY_TIMEOUT

    def __init__(self, driver: BubblewrapDriver, config: SandboxConfig) -> None:
        super().__init__(config)
        self.driver = driver
        self.tmp_size_mb = driver.settings.sandbox_tmp_size_mb
        # The host pid of the sandbox's pid-namespace init (from bwrap's --info-fd).
        self.child_pid: int | None = None
        self._info: asyncio.Task[bytes] | None = None
        # The sandbox's own cgroup (None: per-process rlimits, see BubblewrapDriver.cgroups)
        # and the limits it holds now (a claimed warm sandbox's are its task's).
        self.cgroup: Cgroup | None = None
        self.limits = config.limits
        self.network: bwrap_net.SandboxNetwork | None = None

    async def start_network(self) -> None:
        """The sandbox's own network namespace, rules, resolver and pasta (see bwrap_net.py)."""
        driver, config = self.driver, self.config
        if driver.network_blocker:
            raise SandboxError(f"this executor cannot give sandboxes network: {driver.network_blocker}")
        self.network = bwrap_net.SandboxNetwork(
            driver.settings, driver.netns_prefix, config.network_rules, _refusal_words(config), driver.pasta_as[0]
        )
        try:
            await self.network.start()
        except (netns.NetnsError, nft.NftError, OSError) as exc:
            raise SandboxError(f"could not make the sandbox's network: {exc}") from exc

    async def start(self) -> None:
        driver, config = self.driver, self.config
        if config.network:
            await self.start_network()
        if driver.cgroups is not None:
            try:
                self.cgroup = driver.cgroups.sandbox(config.limits.memory_mb, config.limits.max_processes)
            except OSError as exc:
                raise SandboxError(f"could not make the sandbox's cgroup: {exc}") from exc
            self.cgroup_limits = True
        info_read, info_write = os.pipe2(os.O_CLOEXEC)
        staged = driver.needs_staging(config)
        prefix, sources = driver.staged_launcher(config, staged)
        program = driver.syscall_filter
        seccomp_fd = seccomp.filter_fd(program) if program is not None else None
        resolv_fd = _data_fd(bwrap_net.RESOLV_CONF) if self.network is not None else None
        channel = ChannelPipes()
        try:
            argv = prefix + driver.command(
                config, sources["task"], sources["app"], info_write, sources,
                cgroup=self.cgroup, seccomp_fd=seccomp_fd, resolv_conf_fd=resolv_fd,
                channel_fds=channel.child_fds,
            )
            if driver.host_ids is not None and not staged:
                # setpriv drops to the host uid after exec; changing ids in the forked child
                # (subprocess's user=/group=) forces a full fork beside gRPC's threads, which
                # was seen to crash the child with SIGSEGV.
                uid, gid = driver.host_ids
                argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]
            if self.network is not None:
                # As root, before any uid drop: bwrap and all it starts live in the sandbox's namespace.
                argv = ["nsenter", f"--net={self.network.netns_path}", "--", *argv]
            if self.cgroup is not None:
                argv = join_cgroup_prefix(self.cgroup) + argv
            fds = tuple(fd for fd in (info_write, seccomp_fd, resolv_fd) if fd is not None) + channel.child_fds
            await self._spawn(argv, channel, pass_fds=fds, env={"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"})
        except BaseException as exc:
            os.close(info_read)
            channel.close()
            if isinstance(exc, OSError):
                raise SandboxError(f"could not start bubblewrap: {exc}") from exc
            raise
        finally:
            os.close(info_write)
            seccomp.close_fd(seccomp_fd)
            if resolv_fd is not None:
                os.close(resolv_fd)
        # bwrap writes {"child-pid": N} there right after clone(); it ends when bwrap exits.
        self._info = asyncio.create_task(asyncio.to_thread(_read_all, info_read))

    async def started(self) -> None:
        await self._learn_child_pid(READY_TIMEOUT)
        self.log.debug(
            "sandbox started", bwrap_pid=self.process.pid if self.process else None, child_pid=self.child_pid
        )

    async def _learn_child_pid(self, timeout: float) -> None:
        """The host pid of the namespace's init, from bwrap's --info-fd (if it reported one)."""
        if self.child_pid is not None or self._info is None:
            return
        with contextlib.suppress(TimeoutError, ValueError, KeyError, TypeError, OSError):
            async with asyncio.timeout(timeout):  # not wait_for: see AgentSandbox.start()
                raw_info = await asyncio.shield(self._info)
            self.child_pid = int(json.loads(raw_info)["child-pid"])

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is not None:
            return
        # The agent exits when its stdin closes; so does a sandbox whose start was cancelled
        # before bwrap could protect it (--die-with-parent is set up inside, after clone()).
        self._close_requests()
        # Killing the pid namespace's init tears the whole namespace down, and bwrap only
        # exits once every process in it is gone, so waiting on bwrap means "nothing left".
        await self._learn_child_pid(KILL_GRACE_SECONDS)
        if self.child_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.child_pid, signal.SIGKILL)
            try:
                await asyncio.wait_for(process.wait(), KILL_GRACE_SECONDS)
            except TimeoutError:
                self.log.warning(
                    "bubblewrap outlived its namespace's init; killing it",
                    bwrap_pid=process.pid, child_pid=self.child_pid,
                )
        await self._kill_process(process, "bubblewrap", bwrap_pid=process.pid)

    def apply_limits(self, limits: SandboxLimits) -> None:
        same = (limits.memory_mb, limits.max_processes) == (self.limits.memory_mb, self.limits.max_processes)
        if self.cgroup is None or same:
            return  # (a warm sandbox's are the default limits, which most tasks keep)
        try:
            self.cgroup.set_limits(limits.memory_mb, limits.max_processes)
        except OSError as exc:
            raise SandboxError(f"could not set the warm sandbox's cgroup limits: {exc}") from exc
        self.limits = limits

    def pid_budget_hit(self) -> int:
        budget = self.driver.cgroups
        if self.cgroup is None or budget is None or self.cgroup.reached_own_pids_max():
            return 0
        return budget.max_pids

    async def clean_up(self) -> None:
        # After kill(): bwrap waited for its namespace to empty, nothing is left in the cgroup.
        cgroup, self.cgroup = self.cgroup, None
        network, self.network = self.network, None
        try:
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)
        finally:
            if network is not None:
                await network.close()

    async def update_network(self, rules: NetworkRules) -> None:
        if self.network is None:
            raise errors.FailedPrecondition("this sandbox was created without network; its rules cannot change")
        try:
            await self.network.update(rules)
        except nft.NftError as exc:
            raise SandboxError(f"could not change the sandbox's network rules: {exc}") from exc

    async def network_status(self) -> NetworkStatus:
        if self.network is None:
            return NetworkStatus(enabled=False, rules=self.config.network_rules)
        return await self.network.status()

    async def death_reason(self) -> str:
        reason = await super().death_reason()
        if self.process is not None:
            self.log.info("bubblewrap ended", returncode=self.process.returncode)
        return reason

    def _died_message(self) -> str:
        if self.cgroup is not None and self.cgroup.counters().get("oom_kill"):
            return f"the sandbox was killed: {out_of_memory(self.limits)}"
        detail = self._stderr_text()
        message = "the sandbox ended unexpectedly"
        budget = self.driver.cgroups
        if budget is not None and budget.nearly_used_up():
            message = f"the sandbox could not start or go on: {pid_budget_used_up(budget.max_pids)}"
        return f"{message}: {detail}" if detail else message


# A bubblewrap sandbox: the one agent client over a bwrap transport.
BubblewrapSandbox = AgentSandbox[BubblewrapTransport]


def _searchable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether `uid` can reach (search) `path` and every directory above it."""
    for directory in [path, *path.parents]:
        try:
            st = directory.stat()
        except OSError:
            return False
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _refusal_words(config: SandboxConfig) -> Callable[[str], None] | None:
    callback = config.on_network_refused
    if callback is None:
        return None
    return lambda name: callback(f"lookup of {name} refused")


def _data_fd(text: str) -> int:
    """A pipe's read end holding `text` (small: it fits the pipe), for bwrap's --ro-bind-data."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        os.write(write_fd, text.encode())
    finally:
        os.close(write_fd)
    return read_fd


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)
