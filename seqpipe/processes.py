"""Whether the process that left a file behind still runs: lock files, staging directories.

A killed run cannot clean up after itself; the next run decides from the
owner recorded in the name or content of what was left whether it may take
it over. A process on another host cannot be checked and always counts as
alive, as does a pid this process may not signal.
"""

from __future__ import annotations

import os
import socket


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_tag() -> str:
    """`PID@HOST` of this process, as `owner_alive` reads it back."""
    return f"{os.getpid()}@{socket.gethostname()}"


def owner_alive(tag: str) -> bool:
    """Whether the owner `PID@HOST` may still run (False only for a dead pid of this host)."""
    pid, _, host = tag.partition("@")
    if host != socket.gethostname():
        return True
    return not pid.isdigit() or process_alive(int(pid))
