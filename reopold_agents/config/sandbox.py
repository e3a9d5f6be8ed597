"""Config section `sandbox`: which backend runs model-written code, and its limits.

``sandbox=local|docker|sandbox_fusion`` picks the YAML in configs/sandbox/; `tools.sandbox.make_sandbox`
reads every key below. Limits are shared by all backends (each enforces them its own way, see
docs/sandbox.md); backend-specific keys live in their own sub-section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("local", "docker", "sandbox_fusion")


@dataclass
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock per run; the whole process tree is killed after it
    cpu_time_s: int = 10  # RLIMIT_CPU (local), --cpus quota x timeout (docker)
    memory_mb: int = 512  # RLIMIT_AS (local) / cgroup memory (docker) / memory_limit_MB (fusion)
    max_processes: int = 64  # RLIMIT_NPROC of the sandbox user (local) / pids cgroup (docker)
    max_file_size_mb: int = 16  # RLIMIT_FSIZE: largest single file the code may write
    max_open_files: int = 64  # RLIMIT_NOFILE
    workdir_mb: int = 64  # size of the private writable tmpfs work dir (and /tmp)
    max_output_bytes: int = 16384  # per stream; more is cut, flagged `truncated`, and the run is stopped

    def check(self) -> None:
        for key in ("timeout_s", "cpu_time_s", "memory_mb", "max_processes", "max_file_size_mb",
                    "max_open_files", "workdir_mb", "max_output_bytes"):
            if getattr(self, key) <= 0:
                raise ValueError(f"limits.{key}: must be > 0, got {getattr(self, key)!r}")
        if self.memory_mb < 32:
            raise ValueError(f"limits.memory_mb: {self.memory_mb} MB is too small to start Python (>= 32)")
        if self.max_open_files < 8:
            raise ValueError(f"limits.max_open_files: {self.max_open_files} is too small (>= 8)")
        if self.max_processes < 4:
            raise ValueError(f"limits.max_processes: {self.max_processes} is too small for the runner (>= 4)")


@dataclass
class LocalSandboxConfig:
    bwrap: str = "auto"  # auto: use bubblewrap when installed | always: fail without it | never
    user: str = "nobody"  # who runs the code when we are root (setuid before exec)
    python: str = "/usr/bin/python3"  # interpreter inside the sandbox (must live under a bound path)
    ro_paths: list[str] = field(default_factory=lambda: ["/usr", "/bin", "/lib", "/lib64", "/sbin"])

    def check(self) -> None:
        if self.bwrap not in ("auto", "always", "never"):
            raise ValueError(f"local.bwrap: expected auto|always|never, got {self.bwrap!r}")
        if not self.python.startswith("/"):
            raise ValueError(f"local.python: must be an absolute path, got {self.python!r}")
        for p in self.ro_paths:
            if not p.startswith("/"):
                raise ValueError(f"local.ro_paths: {p!r} is not an absolute path")


@dataclass
class DockerSandboxConfig:
    image: str = "reopold-sandbox:py3"  # built offline by scripts/docker_sandbox_image.sh
    base_url: str = ""  # docker daemon URL; "" = DOCKER_HOST / the default socket
    pool_size: int = 2  # warm containers kept ready
    cpus: float = 1.0  # CPU quota per container
    user: str = "65534:65534"
    reuse: bool = True  # reuse a container after a clean run (processes killed, workdir wiped)

    def check(self) -> None:
        if self.pool_size < 1:
            raise ValueError(f"docker.pool_size: must be >= 1, got {self.pool_size}")
        if self.cpus <= 0:
            raise ValueError(f"docker.cpus: must be > 0, got {self.cpus}")
        if not self.image:
            raise ValueError("docker.image: must name an image")


@dataclass
class FusionSandboxConfig:
    endpoint: str = ""  # SandboxFusion server URL, e.g. http://sandbox:8080; env SANDBOX_FUSION_ENDPOINT
    language: str = "python"
    request_timeout_s: float = 30.0  # HTTP client timeout (on top of limits.timeout_s)
    max_attempts: int = 2  # retries of a failed HTTP request (not of a failed program)

    def check(self) -> None:
        if self.request_timeout_s <= 0:
            raise ValueError(f"sandbox_fusion.request_timeout_s: must be > 0, got {self.request_timeout_s}")
        if self.max_attempts < 1:
            raise ValueError(f"sandbox_fusion.max_attempts: must be >= 1, got {self.max_attempts}")
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"sandbox_fusion.endpoint: expected an http(s) URL, got {self.endpoint!r}")


@dataclass
class SandboxConfig:
    backend: str = "local"
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    local: LocalSandboxConfig = field(default_factory=LocalSandboxConfig)
    docker: DockerSandboxConfig = field(default_factory=DockerSandboxConfig)
    sandbox_fusion: FusionSandboxConfig = field(default_factory=FusionSandboxConfig)

    def check(self) -> None:
        """Range checks; raise ValueError('key: why') so the loader can name the key."""
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {self.backend!r}")
        self.limits.check()
        self.local.check()
        self.docker.check()
        self.sandbox_fusion.check()
