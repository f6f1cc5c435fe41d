"""The OS layer: Landlock + seccomp + no capabilities, applied by the worker to itself
(`confine_self`) before any hook code runs. It holds for root (as CI and most containers
run): Landlock and seccomp restrict every user, and a process without capabilities cannot
raise its hard limits, lift the restrictions or reach other users' files.

Landlock here grants no file access at all (no path is allow-listed, this package's own
files included): the worker has imported everything it needs before it confines itself.
Where the layer cannot be set up, hooks are refused (`require_confinement`, checked in the
calling process before any worker starts) unless the run chose `confinement="none"`.
Standard library only (the worker imports this module too).
"""

from __future__ import annotations

import os
import sys

from agent_core.hooks.errors import HookConfinementError

#: how hooks run: "os" (the OS layer here, the default; refused where it cannot be set up)
#: or "none" (an explicit choice of the run, recorded in every episode header and report)
CONFINEMENTS = ("os", "none")
#: environment variable naming the libseccomp library (default: the system's)
SECCOMP_LIBRARY_ENV = "AUTOMEM_LIBSECCOMP"
DEFAULT_SECCOMP_LIBRARY = "libseccomp.so.2"

_LANDLOCK_CREATE_RULESET, _LANDLOCK_RESTRICT_SELF = 444, 446  # the same on every architecture
_LANDLOCK_CREATE_RULESET_VERSION = 1
#: file-system rights Landlock handles, by the ABI that introduced them: 1: execute, write,
#: read, read dir, remove dir/file, make char/dir/reg/sock/fifo/block/sym; 2: refer;
#: 3: truncate; 5: ioctl on devices. All handled, none granted: no file access at all.
_LANDLOCK_FS_RIGHTS = {1: (1 << 13) - 1, 2: 1 << 13, 3: 1 << 14, 5: 1 << 15}
_LANDLOCK_NET_TCP = 0b11  # ABI 4: bind and connect (TCP)
_LANDLOCK_SCOPES = 0b11   # ABI 6: abstract unix sockets and signals outside the sandbox
_PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 38, 24, 47, 4
_CAPABILITY_VERSION_3 = 0x20080522

#: system calls refused (EPERM) by the worker's seccomp filter, beyond what Landlock refuses:
#: processes and programs, sockets of every family, other processes' memory and signals,
#: file metadata and names, namespaces, mounts, keys, kernel modules, BPF and io_uring.
#: `prlimit64` is refused only for other processes (the worker renews its own CPU limit).
SECCOMP_DENIED = (
    "fork", "vfork", "clone", "clone3", "execve", "execveat",
    "socket", "socketpair", "ptrace", "process_vm_readv", "process_vm_writev",
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "pidfd_open", "pidfd_getfd", "pidfd_send_signal",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "link", "linkat", "symlink", "symlinkat", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "mkdir", "mkdirat", "rmdir", "mknod", "mknodat", "truncate", "utime", "utimes", "utimensat",
    "futimesat", "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_by_handle_at",
    "name_to_handle_at", "fanotify_init", "inotify_init", "inotify_init1",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "sethostname", "setdomainname", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "acct", "quotactl", "syslog", "uselib", "vhangup", "personality",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups",
    "setfsuid", "setfsgid", "capset", "memfd_create",
)


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when the kernel has none or it is disabled."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(ctypes.c_long(_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
                       ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    return max(0, int(abi))


def seccomp_library() -> str:
    """The libseccomp shared library the worker loads ($AUTOMEM_LIBSECCOMP or the system's)."""
    return os.environ.get(SECCOMP_LIBRARY_ENV) or DEFAULT_SECCOMP_LIBRARY


def confinement_problem(library: str | None = None) -> str | None:
    """Why the OS layer cannot be set up on this machine (None when it can): what is
    missing and how to get it. Checked in the calling process, before any worker starts;
    the worker checks again as it confines itself, and refuses to run hooks if it cannot."""
    import ctypes

    how_to_skip = ("or run hooks unconfined by an explicit choice of the run (`hooks: {confinement: "
                   "none}` in the flow's parameters, `--hooks-confinement none` on the command line), "
                   "which every episode header and report then shows")
    if not sys.platform.startswith("linux"):
        return f"hook confinement needs Linux (Landlock and seccomp), not {sys.platform}; {how_to_skip}"
    if landlock_abi() < 1:
        return ("this kernel has no Landlock, or it is disabled (needs Linux 5.13+ with landlock in the "
                f"kernel's `lsm=` list); {how_to_skip}")
    library = library or seccomp_library()
    try:
        ctypes.CDLL(library)
    except OSError:
        return (f"libseccomp could not be loaded ({library!r}): install it (Debian/Ubuntu: `apt-get "
                f"install libseccomp2`) or set {SECCOMP_LIBRARY_ENV} to its path; {how_to_skip}")
    return None


def require_confinement(filename: str = "hooks.py") -> None:
    """`HookConfinementError` (fail closed) unless the OS layer can be set up here."""
    problem = confinement_problem()
    if problem:
        raise HookConfinementError(f"{filename} is refused: hooks run only confined, and {problem}")


def confine_self(library: str) -> None:  # pragma: no cover - runs in the worker process
    """Confine this process for good: no new privileges, no capabilities, Landlock with no
    file access and no TCP (and, from ABI 6, no signals or abstract sockets outside), a
    seccomp filter refusing `SECCOMP_DENIED`. Raises OSError naming the step that failed."""
    import ctypes

    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    try:
        seccomp = ctypes.CDLL(library, use_errno=True)
    except OSError as exc:
        raise OSError(2, f"libseccomp could not be loaded ({library!r}): {exc}") from None

    def check(ok: bool, what: str) -> None:
        if not ok:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "prctl(NO_NEW_PRIVS)")
    # capabilities: the bounding set (so none come back), the ambient set, then our own sets
    for cap in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == 22:  # EINVAL: past the last capability
                break
            check(os.geteuid() != 0, f"prctl(CAPBSET_DROP, {cap})")  # EPERM is expected unless root
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)

    class CapHeader(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class CapData(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    check(libc.capset(ctypes.byref(CapHeader(_CAPABILITY_VERSION_3, 0)), (CapData * 2)()) == 0, "capset")
    # Landlock
    abi = int(libc.syscall(ctypes.c_long(_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
                           ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION)))
    check(abi >= 1, "Landlock")
    fs = sum(bits for since, bits in _LANDLOCK_FS_RIGHTS.items() if abi >= since)
    attr = (ctypes.c_uint64 * 3)(fs, _LANDLOCK_NET_TCP if abi >= 4 else 0, _LANDLOCK_SCOPES if abi >= 6 else 0)
    size = 8 * (3 if abi >= 6 else 2 if abi >= 4 else 1)
    fd = int(libc.syscall(ctypes.c_long(_LANDLOCK_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size),
                          ctypes.c_uint32(0)))
    check(fd >= 0, "landlock_create_ruleset")
    try:
        check(libc.syscall(ctypes.c_long(_LANDLOCK_RESTRICT_SELF), ctypes.c_int(fd), ctypes.c_uint32(0)) == 0,
              "landlock_restrict_self")
    finally:
        os.close(fd)
    # seccomp, through libseccomp (loaded above: Landlock now refuses reading it)
    class ArgCmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                    ("datum_b", ctypes.c_uint64)]

    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.c_void_p]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    seccomp.seccomp_release.argtypes = [ctypes.c_void_p]
    allow, eperm = 0x7FFF0000, 0x00050000 | 1  # SCMP_ACT_ALLOW, SCMP_ACT_ERRNO(EPERM)
    ctx = seccomp.seccomp_init(allow)
    check(bool(ctx), "seccomp_init")
    try:
        for name in SECCOMP_DENIED:
            nr = seccomp.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not a system call of this architecture (or unknown to this libseccomp)
            rc = seccomp.seccomp_rule_add_array(ctx, eperm, nr, 0, None)
            if rc < 0:
                raise OSError(-rc, f"seccomp_rule_add({name}): {os.strerror(-rc)}")
        nr = seccomp.seccomp_syscall_resolve_name(b"prlimit64")
        if nr >= 0:  # only for this process (pid 0)
            other = ArgCmp(0, 1, 0, 0)  # SCMP_A0(SCMP_CMP_NE, 0)
            rc = seccomp.seccomp_rule_add_array(ctx, eperm, nr, 1, ctypes.byref(other))
            if rc < 0:
                raise OSError(-rc, f"seccomp_rule_add(prlimit64): {os.strerror(-rc)}")
        rc = seccomp.seccomp_load(ctx)
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
    finally:
        seccomp.seccomp_release(ctx)
