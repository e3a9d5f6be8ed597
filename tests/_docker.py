"""Docker for the sandbox tests: use $DOCKER_HOST if it answers, else start a private dockerd (as root).

The daemon started here lives in a temp dir (vfs storage, no iptables, no bridge: the sandbox uses
``--network none`` anyway), gets the image from scripts/docker_sandbox_image.sh, and is stopped and
deleted at the end of the session. When no daemon can be had the docker tests are skipped with the
reason, or fail when ``REOPOLD_REQUIRE_DOCKER=1`` (set by .ci/run as root): CI never passes by skipping.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE = "reopold-sandbox:py3"
REQUIRE_ENV = "REOPOLD_REQUIRE_DOCKER"


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"docker sandbox tests are required ({REQUIRE_ENV}=1) but {reason}", pytrace=False)
    pytest.skip(f"docker sandbox tests skipped: {reason} (set {REQUIRE_ENV}=1 to make this an error)")


def _ping(base_url: str) -> str | None:
    """None if a daemon answers at ``base_url``, else the error."""
    try:
        import docker

        client = docker.DockerClient(base_url=base_url, timeout=5)
        client.ping()
        client.close()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


def _ensure_image(base_url: str) -> None:
    import docker
    from docker.errors import ImageNotFound

    client = docker.DockerClient(base_url=base_url)
    try:
        client.images.get(IMAGE)
        return
    except ImageNotFound:
        pass
    finally:
        client.close()
    env = {**os.environ, "DOCKER_HOST": base_url}
    proc = subprocess.run(["bash", str(REPO / "scripts/docker_sandbox_image.sh"), IMAGE], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"building {IMAGE} failed:\n{proc.stdout}\n{proc.stderr}", pytrace=False)


class _Dockerd:
    """A dockerd this test session started (and alone stops)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="reopold-dockerd-"))
        self.sock = self.root / "docker.sock"
        self.base_url = f"unix://{self.sock}"
        self.log = open(self.root / "dockerd.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["dockerd", "--storage-driver=vfs", "--iptables=false", "--ip6tables=false", "--bridge=none",
             "-H", self.base_url, "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.root / "docker.pid")],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> str | None:
        deadline = time.monotonic() + timeout
        err = "did not start"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"dockerd exited with {self.proc.returncode}: {self.tail()}"
            if self.sock.exists():
                err = _ping(self.base_url) or ""
                if not err:
                    return None
            time.sleep(0.3)
        return f"dockerd not ready after {timeout:.0f}s ({err}): {self.tail()}"

    def tail(self) -> str:
        try:
            return (self.root / "dockerd.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def stop(self) -> None:
        import docker

        try:  # containers a crashed test left behind would make dockerd's shutdown wait for them
            client = docker.DockerClient(base_url=self.base_url, timeout=10)
            for c in client.containers.list(all=True):
                c.remove(force=True)
            client.close()
        except Exception:  # noqa: BLE001 - best effort; the kill below still ends everything
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: dockerd + its containerd
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


_DAEMON: dict[str, object] = {}  # one daemon per test process, shared by every module that imports the fixture


def _private_daemon() -> str:
    """Start (once) a dockerd of our own; it is stopped when the test process exits."""
    if "url" in _DAEMON:
        return str(_DAEMON["url"])
    if "error" in _DAEMON:
        _unavailable(str(_DAEMON["error"]))
    daemon = _Dockerd()
    atexit.register(daemon.stop)
    err = daemon.wait_ready()
    if err:
        _DAEMON["error"] = f"the private dockerd did not start: {err}"
        _unavailable(str(_DAEMON["error"]))
    _ensure_image(daemon.base_url)
    _DAEMON["url"] = daemon.base_url
    return daemon.base_url


@pytest.fixture(scope="session")
def docker_base_url() -> str:
    """URL of a running Docker daemon that has the sandbox image.

    Test modules import this fixture; pytest then sets it up once per module, so the daemon itself is
    cached here and started at most once per test process.
    """
    try:
        import docker  # noqa: F401
    except ImportError:
        _unavailable("the docker SDK is not installed (pip install 'reopold-agents[docker]')")
    host = os.environ.get("DOCKER_HOST", "")
    if host and _ping(host) is None:
        _ensure_image(host)
        return host
    if os.geteuid() != 0:
        _unavailable("no daemon at $DOCKER_HOST and not root, so dockerd cannot be started here")
    if shutil.which("dockerd") is None:
        _unavailable("dockerd is not installed (apt-get install docker.io; scripts/setup.sh does it as root)")
    return _private_daemon()
