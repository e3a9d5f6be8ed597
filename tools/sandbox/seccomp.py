"""A small seccomp filter for sandboxed code: no ptrace, no kernel keyrings, no other process's memory.

Why these calls: ``ptrace`` / ``process_vm_*`` would let the code drive the sandbox's own PID 1 (same
uid) and so tamper with what keeps the run contained; ``keyctl`` / ``add_key`` / ``request_key`` reach
kernel keyrings, which namespaces do not separate (a uid's user keyring is shared by every run of
that uid outside a user namespace). ``bpf``, ``perf_event_open`` and ``userfaultfd`` are kernel attack
surface no Python program needs. Each returns EPERM; everything else is allowed.

The filter is raw classic BPF (no libseccomp needed), built for x86_64 only: elsewhere `program()` is
None and the caller logs that this layer is missing. It is installed with ``PR_SET_NO_NEW_PRIVS``
in the child just before exec (`install`), so it covers bwrap and everything below it.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_BIT = 0x40000000
DENIED_X86_64 = {
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
    "add_key": 248, "request_key": 249, "keyctl": 250,
    "perf_event_open": 298, "bpf": 321, "userfaultfd": 323,
}
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW, _RET_KILL = 0x7FFF0000, 0x80000000
_RET_EPERM = 0x00050000 | errno.EPERM
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def program() -> bytes | None:
    """The filter as ``struct sock_filter[]`` bytes, or None on an architecture it is not written for."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    nrs = sorted(DENIED_X86_64.values())
    insns = [
        _insn(_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _insn(_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _insn(_RET_K, 0, 0, _RET_KILL),  # another ABI (i386 via int 0x80): refuse outright
        _insn(_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        _insn(_JGE_K, len(nrs) + 1, 0, X32_BIT),  # x32 numbering: deny
    ]
    for i, nr in enumerate(nrs):
        insns.append(_insn(_JEQ_K, len(nrs) - i, 0, nr))  # jump to the EPERM return
    insns += [_insn(_RET_K, 0, 0, _RET_ALLOW), _insn(_RET_K, 0, 0, _RET_EPERM)]
    return b"".join(insns)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Installer:
    """Prepared in the parent (allocation, library lookup), called in the child: `__call__` installs."""

    def __init__(self, prog: bytes) -> None:
        self._buf = ctypes.create_string_buffer(prog, len(prog))
        self._fprog = _SockFprog(len(prog) // 8, ctypes.addressof(self._buf))
        self._libc = ctypes.CDLL(None, use_errno=True)

    def __call__(self) -> None:
        if self._libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if self._libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(self._fprog), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


KEYCTL_JOIN_SESSION_KEYRING = 1
SYS_KEYCTL_X86_64 = 250


def join_new_session_keyring(libc: ctypes.CDLL) -> None:
    """Give the calling process a new, empty anonymous session keyring (no access to the caller's)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return
    if libc.syscall(SYS_KEYCTL_X86_64, KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        raise OSError(ctypes.get_errno(), "keyctl(KEYCTL_JOIN_SESSION_KEYRING)")
