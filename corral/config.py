"""Settings for every Corral process, read from CORRAL_* environment variables.

One class for all services keeps one obvious place for every knob: a service reads the
fields it needs, and `corral up` passes the same environment to every process it starts.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from corral.bounds import MAX_STEP_TIMEOUT_SECONDS, MAX_TTL_SECONDS

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "corral"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="ignore")

    data_dir: Path = Field(
        DEFAULT_DATA_DIR,
        description="Where SQLite files, task directories and logs live.",
    )
    log_level: str = Field("info", description="debug, info, warning or error.")
    log_json: bool = Field(False, description="Log JSON lines instead of key=value text.")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="The scheduler's, memory service's and gateway's event loop: uvloop (auto: "
        "where it is installed; a fifth to a third less CPU per task) or asyncio's own.",
    )

    # --- metrics and traces (corral/service_metrics.py, corral/tracing.py) ----------------
    scheduler_metrics_address: str = Field(
        "", description="host:port of the scheduler's Prometheus /metrics (off if empty; keep it on loopback "
        "or a monitoring network: it shows task counts and RPC methods). `corral up` picks a loopback port.",
    )
    executor_metrics_address: str = Field(
        "", description="host:port of the executor's Prometheus /metrics (off if empty)."
    )
    memory_metrics_address: str = Field(
        "", description="host:port of the memory service's Prometheus /metrics (off if empty)."
    )
    tracing: Literal["auto", "otlp", "console", "off"] = Field(
        "auto",
        description="OpenTelemetry traces: otlp (to OTEL_EXPORTER_OTLP_ENDPOINT, over gRPC), console "
        "(to stderr), off; auto: otlp when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER=otlp is "
        "set, console when OTEL_TRACES_EXPORTER=console, else off.",
    )

    # --- trust: TLS between services (corral.pki, corral.authz) -------------------------
    tls_dir: Path | None = Field(
        None,
        description="Directory of the deployment's certificates: ca.crt and <role>.crt/.key "
        "(data_dir/pki if unset; `corral up` creates it, `corral pki init` makes one).",
    )
    tls_ca_file: Path | None = Field(None, description="The CA certificate (tls_dir/ca.crt if unset).")
    tls_cert_file: Path | None = Field(
        None, description="This process's certificate (tls_dir/<role>.crt if unset)."
    )
    tls_key_file: Path | None = Field(None, description="This process's key (tls_dir/<role>.key if unset).")

    # --- API keys and tenants (corral/api_keys.py) --------------------------------------
    auth: Literal["auto", "keys", "off"] = Field(
        "auto",
        description="keys: every public call needs an API key; off: none does (one tenant, "
        "'local'; a warning at every start when a service listens beyond loopback); auto: off "
        "while the gateway and the scheduler listen on loopback only, and a refusal to start "
        "otherwise (choose keys or off). Give every service the same value.",
    )
    api_key: str = Field("", description="The API key the CLI and the SDK send (crl_...).")
    quota_max_tasks: int = Field(
        100, ge=1, description="Unfinished (scheduled or running) tasks a tenant may have at once."
    )
    quota_max_sandboxes: int = Field(10, ge=1, description="Active long-lived sandboxes a tenant may have at once.")
    quota_submissions_per_second: float = Field(
        20.0, gt=0, description="Tasks and sandboxes a tenant may submit per second (bursts of twice that)."
    )
    audit_log: Path | None = Field(
        None, description="The scheduler's audit log, one JSON line per security event (data_dir/audit.log if unset)."
    )

    # --- scheduler ---------------------------------------------------------------------
    scheduler_address: str = Field(
        "127.0.0.1:50051",
        description="host:port the scheduler listens on and clients dial; with scheduler replicas, "
        "every replica's host:port, comma-separated (clients call whichever leads).",
    )
    scheduler_listen_address: str = Field(
        "",
        description="host:port this scheduler replica listens on (empty: scheduler_address, which "
        "must then be one address).",
    )
    scheduler_lease_seconds: float = Field(
        2.0,
        gt=0,
        description="Scheduler replicas on PostgreSQL: how long the leader's lease lasts without "
        "renewal (renewed every quarter of it); a standby takes over once it lapses.",
    )
    scheduler_public_address: str = Field(
        "",
        description="host:port of the scheduler's public listener, for clients with an API key and no "
        "certificate (TLS the client checks with the deployment's CA; `authorization: Bearer <key>` on "
        "each call; only the public corral.v1 services answer there); empty: none.",
    )
    scheduler_database_url: str = Field(
        "", description="SQLAlchemy URL of the scheduler's database (SQLite in data_dir if empty)."
    )
    heartbeat_interval_seconds: float = Field(
        2.0, description="How often executors send a heartbeat."
    )
    heartbeat_timeout_seconds: float = Field(
        10.0, description="An executor silent this long is lost; its running tasks fail."
    )
    idempotency_key_hours: float = Field(
        24.0, gt=0, description="How long an Idempotency-Key answers its first request's result."
    )
    retention_hours: float = Field(
        168.0,
        ge=0,
        description="Finished tasks (their records, events and history, and their directories on the "
        "executor) are removed this long after they ended; 0 keeps them for ever. Running tasks and "
        "live sandboxes are never touched.",
    )
    retention_sweep_seconds: float = Field(
        600.0, gt=0, description="How often the retention sweep runs (scheduler, memory, executor)."
    )

    # --- memory ------------------------------------------------------------------------
    memory_address: str = Field(
        "127.0.0.1:50052", description="host:port the memory service listens on and clients dial."
    )
    memory_database_url: str = Field(
        "", description="SQLAlchemy URL of the memory database (SQLite in data_dir if empty)."
    )

    # --- executor ----------------------------------------------------------------------
    executor_address: str = Field(
        "127.0.0.1:50053", description="host:port the executor listens on."
    )
    executor_advertise_address: str = Field(
        "", description="host:port the scheduler and the gateway dial to reach this executor (the listen "
        "address if empty): this host's own address when it listens on all interfaces.",
    )
    executor_id: str = Field("", description="Stable name of this executor (hostname-port if empty).")
    executor_capacity: int = Field(8, ge=1, description="Tasks this executor runs at once.")
    executor_max_sandboxes: int = Field(
        0,
        ge=0,
        description="Long-lived sandboxes this executor holds at once (0: as many as its capacity); "
        "a create beyond what all executors hold is refused (429, Retry-After).",
    )
    executor_history_spool_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="History the executor could not deliver to the memory service, kept on disk "
        "(data_dir/history-spool/) until it is back, at most this many bytes; past it entries "
        "are dropped and counted (the log says so). 0: keep only what fits in memory.",
    )
    executor_orphan_grace_seconds: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="How long an executor keeps running a task whose scheduler went away (keeping its "
        "events) for a scheduler back to take it again; after that the task is cancelled. A restarted "
        "scheduler waits as long for each executor to come back before failing its tasks.",
    )
    executor_event_buffer_bytes: int = Field(
        4 * 1024 * 1024,
        ge=0,
        description="Bytes of a task's events an executor keeps in memory until the scheduler has them "
        "all; beyond that they are spilled to a file in data_dir/event-spill.",
    )
    sandbox_driver: str = Field("bubblewrap", description="Sandbox driver: bubblewrap or docker.")
    sandbox_host_uid: int = Field(
        65534,
        description="Unprivileged host uid sandboxes run as when the executor runs as root.",
    )
    sandbox_network_helper_uid: int = Field(
        65533,
        ge=0,
        description="Unprivileged host uid pasta (a networked bubblewrap sandbox's way out) runs as; it "
        "owns the user namespace that owns the sandbox's network namespace. Give it a uid nothing else "
        "runs as, other than sandbox_host_uid. Needs /dev/net/tun mode 0666; otherwise pasta runs as root.",
    )
    step_timeout_seconds: float = Field(
        60.0, gt=0, le=MAX_STEP_TIMEOUT_SECONDS, description="Default per-step timeout."
    )
    max_step_timeout_seconds: float = Field(
        3600.0, gt=0, le=MAX_STEP_TIMEOUT_SECONDS, description="Largest timeout a step may ask for (at most a week)."
    )
    sandbox_memory_mb: int = Field(
        2048, ge=64, description="Default memory limit of a sandbox as a whole (its cgroup; no swap), MiB."
    )
    sandbox_max_processes: int = Field(
        256, ge=8, description="Default limit on processes and threads of a sandbox as a whole (pids.max)."
    )
    sandbox_cgroups: bool = Field(
        True,
        description="Bound each bubblewrap sandbox, and all of an executor's sandboxes together, by "
        "cgroups where the executor can make them (root, or a delegated cgroup v2 subtree); "
        "false, or where none can be made: per-process rlimits only (reported in the executor's status).",
    )
    executor_max_pids: int = Field(
        0,
        ge=0,
        description="Processes and threads all of this executor's sandboxes may have together "
        "(a parent cgroup's pids.max); 0: a quarter of the host's pid_max, at most 8192.",
    )
    sandbox_max_file_size_mb: int = Field(256, ge=1, description="Default largest file a step may write, MiB.")
    sandbox_stage_dir: Path = Field(
        Path("/run/corral-sandbox"),
        description="World-searchable mount points used, as root, to hand sandboxes directories "
        "their unprivileged uid could not reach (e.g. under /root).",
    )
    sandbox_disk_mb: int = Field(
        4096, ge=1, description="Default most a task's directory may hold, MiB (task limits.disk_mb)."
    )
    sandbox_max_files: int = Field(
        100_000, ge=10, description="Most files and directories a task's directory may hold."
    )
    sandbox_disk_fs: bool = Field(
        True,
        description="Give each sandbox its own size-limited filesystem (loop-mounted ext4, as root) "
        "so the kernel enforces its disk quota; off, or where it cannot be made, the quota is measured.",
    )
    sandbox_max_filesystems: int = Field(
        64,
        ge=1,
        description="Most per-sandbox filesystems (loop devices) held at once; beyond, quotas are measured.",
    )
    disk_check_interval_seconds: float = Field(
        0.5, gt=0, description="How often a running task's directory is measured against its quota."
    )
    sandbox_tmp_size_mb: int = Field(
        512, ge=16, description="Size of each sandbox's private /tmp (a tmpfs), MiB."
    )
    sandbox_shm_size_mb: int = Field(
        64, ge=1, description="Size of each sandbox's /dev/shm (a tmpfs, host memory), MiB."
    )
    sandbox_seccomp: bool = Field(
        True,
        description="Install Corral's syscall filter in every sandbox, both drivers (see "
        "services/executor/drivers/seccomp.py): no io_uring, kernel keyring, mounts or "
        "namespaces, and no setuid/setgid file or device in task directories. Needs libseccomp. "
        "false is for debugging only: the executor then warns loudly at start.",
    )
    sandbox_cpus: float = Field(
        1.0, gt=0, description="CPUs each sandbox may use (docker driver: nano_cpus)."
    )
    docker_image: str = Field(
        "corral/sandbox:latest", description="Sandbox image of the docker driver (scripts/build-images)."
    )
    sandbox_dns_upstream: str = Field(
        "",
        description="Resolvers the sandboxes' DNS resolver asks for allowed names, "
        '"host:port" comma-separated ("203.0.113.53:53,[2001:db8::53]:53"); empty: the '
        "host's /etc/resolv.conf nameservers.",
    )
    bwrap_warm_pool: int = Field(
        2, ge=0, description="Started bubblewrap sandboxes kept ready for new tasks (0: none); "
        "used by tasks without network, desktop or long-lived sandbox.",
    )
    docker_warm_pool: int = Field(
        0, ge=0, description="Started containers the docker driver keeps ready for new tasks (0: none)."
    )
    docker_network: str = Field(
        "corral-sandboxes",
        description="The Docker network Corral creates and owns for sandboxes whose task asks for "
        "network (others get none): a bridge without inter-container traffic, filtered by the "
        "executor's nftables table in the host's namespace (services/executor/network/docker_net.py).",
    )
    docker_network_subnet: str = Field(
        "10.231.0.0/16", description="Subnet of the docker driver's sandbox network (its gateway: the first address)."
    )
    docker_network_bridge: str = Field(
        "corral0", max_length=15, description="Name of the host bridge interface of the sandbox network."
    )
    docker_runtime: str = Field(
        "",
        description="OCI runtime of sandbox containers (empty: dockerd's default, runc); runsc runs "
        "them on gVisor (scripts/install-gvisor registers it).",
    )
    docker_tasks_host_dir: Path | None = Field(
        None,
        description="Where tasks_dir is on the Docker host, when the executor itself runs in a "
        "container and sees it elsewhere (bind-mount sources are host paths).",
    )
    max_output_bytes: int = Field(
        1024 * 1024, ge=1024, description="Default bytes of stdout (and of stderr) kept per step."
    )
    output_preview_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=8 * 1024 * 1024,
        description="Bytes of a step's stdout (and of its stderr) its result carries (GET /status, "
        "/v1/tasks/{id}); the whole output is in its output events and at "
        "/v1/tasks/{id}/steps/{index}/output.",
    )
    # The most a task (or a long-lived sandbox) may ask for in `limits`; beyond is refused.
    max_task_memory_mb: int = Field(16384, ge=64, description="Largest limits.memory_mb a task may ask for.")
    max_task_processes: int = Field(4096, ge=8, description="Largest limits.max_processes a task may ask for.")
    max_task_file_size_mb: int = Field(8192, ge=1, description="Largest limits.max_file_size_mb a task may ask for.")
    max_task_output_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest limits.max_output_bytes a task may ask for."
    )
    max_task_disk_mb: int = Field(65536, ge=1, description="Largest limits.disk_mb a task may ask for.")
    max_read_file_bytes: int = Field(10 * 1024 * 1024, description="Largest file read_file returns.")
    max_write_file_bytes: int = Field(10 * 1024 * 1024, description="Largest content write_file accepts.")
    max_list_entries: int = Field(10_000, gt=0, description="Most entries one list_files step returns.")
    sandbox_file_max_bytes: int = Field(
        100 * 1024 * 1024,
        gt=0,
        description="Largest file (or tar archive) a sandbox call moves in or out: "
        "GET/PUT /v1/sandboxes/{id}/files, upload and download.",
    )
    sandbox_background_commands: int = Field(
        32, gt=0, description="Background commands a long-lived sandbox keeps (running or ended) at once."
    )
    sandbox_agent: Literal["auto", "compiled", "python"] = Field(
        "auto",
        description="The step agent sandboxes start: compiled (runtime_dir/corral-agent, built by "
        "scripts/build-agent; it hands what it does not serve to the Python one), python "
        "(runtime_dir/agent.py alone), or auto: compiled where the binary is there (docker: the "
        "image's command; Python on gVisor, which cannot run the compiled agent's execute-only helper).",
    )
    runtime_dir: Path = Field(
        Path(__file__).resolve().parent.parent / "sandbox" / "runtime",
        description="Directory mounted read-only at /app inside sandboxes (runner, TypeScript).",
    )

    sandbox_run_dir: Path | None = Field(
        None,
        description="Where sandboxes' run directories (their unix sockets: gui, VNC, Jupyter) live "
        "on the executor's host (data_dir/run if unset). Keep the path short: socket paths are "
        "limited to 107 bytes. The gateway must see the same directory.",
    )
    sandbox_default_ttl_seconds: float = Field(
        3600.0, gt=0, le=MAX_TTL_SECONDS, description="Lifetime of a long-lived sandbox when the client gives none."
    )
    sandbox_max_ttl_seconds: float = Field(
        7 * 24 * 3600.0, gt=0, le=MAX_TTL_SECONDS,
        description="Longest lifetime a sandbox may be given at once (at most a year).",
    )
    novnc_dir: Path = Field(
        Path("/usr/share/novnc"), description="The noVNC client the gateway serves (Debian's novnc)."
    )

    # --- gateway -----------------------------------------------------------------------
    gateway_host: str = Field("127.0.0.1", description="Interface the REST gateway binds.")
    gateway_port: int = Field(8000, description="Port of the REST gateway.")
    max_request_bytes: int = Field(
        20 * 1024 * 1024, description="Largest request body the gateway accepts."
    )
    gateway_rpc_timeout_seconds: float = Field(
        30.0, gt=0, description="Deadline of the gateway's unary gRPC calls to scheduler and memory."
    )
    gateway_call_route_seconds: float = Field(
        2.0, ge=0, le=60,
        description="How long the gateway sends a sandbox's quick calls (commands, file stat and operations, "
        "desktop actions) straight to its executor on the scheduler's word before asking again: a key revoked "
        "or a sandbox deleted through another gateway stops within it. 0: always through the scheduler.",
    )
    gateway_sse_keepalive_seconds: float = Field(
        15.0, gt=0, description="Idle time after which an event stream sends a keep-alive comment."
    )
    gateway_header_timeout_seconds: float = Field(
        10.0, gt=0, description="A request whose line and headers have not all arrived this long after "
        "its first byte (or the connection's opening) is cut off."
    )
    gateway_body_timeout_seconds: float = Field(
        30.0, gt=0, description="A request whose body has not all arrived this long after its headers is cut off."
    )
    gateway_keep_alive_seconds: float = Field(
        5.0, gt=0, description="An idle keep-alive connection is closed after this long."
    )

    @cached_property
    def tasks_dir(self) -> Path:
        return self.data_dir / "tasks"

    @property
    def run_dir_root(self) -> Path:
        return self.sandbox_run_dir or self.data_dir / "run"

    @property
    def pki_dir(self) -> Path:
        return self.tls_dir or self.data_dir / "pki"

    def tls_paths(self, role: str) -> tuple[Path, Path, Path]:
        """CA certificate, certificate and key a process of `role` uses."""
        return (
            self.tls_ca_file or self.pki_dir / "ca.crt",
            self.tls_cert_file or self.pki_dir / f"{role}.crt",
            self.tls_key_file or self.pki_dir / f"{role}.key",
        )

    @property
    def audit_log_path(self) -> Path:
        return self.audit_log or self.data_dir / "audit.log"

    def database_url(self, service: str) -> str:
        configured = {
            "scheduler": self.scheduler_database_url,
            "memory": self.memory_database_url,
        }[service]
        return configured or f"sqlite+aiosqlite:///{self.data_dir / (service + '.db')}"


def load_settings() -> Settings:
    return Settings()
