"""Run a command in a private network namespace whose only interface is loopback.

Orthanc 1.10 cannot bind to loopback only, and a browser must not reach anything but
127.0.0.1 during the viewer tests. ``unshare -n`` (root) gives the command a fresh network
namespace with no route to the outside; ``ip link set lo up`` brings up its loopback. Every
process started inside (Orthanc, the HTTP server, Chromium) inherits it.
"""
from __future__ import annotations

import os
import shutil
import subprocess


def netns_available() -> tuple[bool, str]:
    """(usable, reason) for :func:`isolated_argv`."""
    if shutil.which("unshare") is None:
        return False, "unshare (util-linux) not installed"
    if shutil.which("ip") is None and not os.path.exists("/usr/sbin/ip"):
        return False, "ip (iproute2) not installed"
    try:
        r = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"unshare -n failed: {e}"
    if r.returncode != 0:
        return False, ("unshare -n needs root (or CAP_SYS_ADMIN): "
                       + r.stderr.decode(errors="replace").strip())
    return True, ""


def isolated_argv(argv: list[str]) -> list[str]:
    """argv wrapped so that it runs with loopback as its only network interface."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    script = f'{ip} link set lo up && exec "$@"'
    return ["unshare", "-n", "sh", "-c", script, "sh", *argv]


def interfaces() -> list[str]:
    """Names of the network interfaces of this process's network namespace.

    (socket.if_nameindex asks the kernel for the current namespace; /sys/class/net would show
    the host's interfaces unless sysfs is remounted.)"""
    import socket

    try:
        return sorted(name for _, name in socket.if_nameindex())
    except OSError:
        return []


CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def _bring_loopback_up() -> None:
    """ifconfig lo up, by ioctl (no iproute2 needed)."""
    import fcntl
    import socket
    import struct

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def enter_private_netns() -> tuple[bool, str]:
    """Move the calling thread (and every process/thread it starts afterwards) into a new
    network namespace with only a loopback interface. Sockets created before stay where they
    were: a listening socket bound to 127.0.0.1 beforehand still serves the host's loopback,
    while anything started afterwards (Orthanc) is unreachable from outside.

    Call it before starting threads. Tries CLONE_NEWNET (root / CAP_SYS_ADMIN), then an
    unprivileged user namespace + network namespace. Returns (done, how-or-why-not).
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) == 0:
        how = "network namespace"
    else:
        err = ctypes.get_errno()
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            return False, (f"unshare(CLONE_NEWNET) failed ({os.strerror(err)}) and no "
                           f"unprivileged user namespace ({os.strerror(ctypes.get_errno())})")
        try:
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{gid} {gid} 1")
        except OSError as e:  # still isolated; uid mapping is cosmetic for our needs
            _ = e
        how = "user + network namespace"
    try:
        _bring_loopback_up()
    except OSError as e:
        return False, f"entered a {how} but could not bring loopback up: {e}"
    return True, how
