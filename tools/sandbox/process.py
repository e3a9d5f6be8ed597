"""Run a child process with a wall-clock deadline and capped output, killing its whole process group.

Shared by the `local` backend (around bwrap or the bare interpreter). Output is read with a selector so
a child that floods stdout cannot fill memory or deadlock on a full pipe: past the cap the run is
stopped and flagged ``truncated``.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

from tools.sandbox.base import truncate


@dataclass
class Captured:
    stdout: str
    stderr: str
    returncode: int
    timed_out: bool
    output_exceeded: bool
    truncated: bool
    duration_s: float


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own session: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def run_captured(
    argv: list[str],
    *,
    stdin_path: str | None,
    timeout_s: float,
    max_output_bytes: int,
    env: dict[str, str],
    cwd: str | None = None,
    user: int | None = None,
    group: int | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Captured:
    """Start ``argv`` in a new session, collect at most ``max_output_bytes`` per stream, enforce the deadline."""
    start = time.monotonic()
    deadline = start + timeout_s
    stdin_f = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            argv,
            stdin=stdin_f,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
            preexec_fn=preexec_fn,
            close_fds=True,
        )
    finally:
        if stdin_path:
            stdin_f.close()  # type: ignore[union-attr]
    bufs = {"stdout": bytearray(), "stderr": bytearray()}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")  # type: ignore[arg-type]
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")  # type: ignore[arg-type]
    timed_out = exceeded = False
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(remaining, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.data]
                buf += chunk
                if len(buf) > max_output_bytes:
                    exceeded = True
            if exceeded:
                break
            # The child may exit while a grandchild keeps the pipes open: stop at the child's exit
            # (after draining what is buffered) instead of waiting for the deadline.
            if proc.poll() is not None:
                for key, _ in sel.select(timeout=0.05):
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        bufs[key.data] += chunk
                break
        if timed_out or exceeded:
            _kill_group(proc)
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            proc.wait()
    finally:
        _kill_group(proc)  # leftovers in the child's process group (sleeping children and the like)
        sel.close()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    out, cut_out = truncate(bytes(bufs["stdout"]), max_output_bytes)
    err, cut_err = truncate(bytes(bufs["stderr"]), max_output_bytes)
    return Captured(
        stdout=out,
        stderr=err,
        returncode=proc.returncode,
        timed_out=timed_out,
        output_exceeded=exceeded,
        truncated=cut_out or cut_err,
        duration_s=time.monotonic() - start,
    )
