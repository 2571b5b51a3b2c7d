"""Memory and process limits for a whole sandbox, in a cgroup of its own, where the host lets
the service create cgroups (run as root, or with a delegated cgroup v2 subtree).

rlimits are per process: 64 processes of 512 MiB each would be 32 GiB. A cgroup bounds the
sandbox as a whole: `memory` (its tmpfs pages included) and `pids`, and counts the OOM kills
it made, so that a run ended by the memory limit says so. One cgroup per host uid: a uid
belongs to one live sandbox at a time (adapters/bwrap.py), so its cgroup does too.

Both hierarchies are supported: v2 (one tree, `memory.max`, `pids.max`, `memory.events`) and
v1 (a tree per controller, `memory.limit_in_bytes`, `memory.oom_control`). Where neither can
be written, `detect()` returns None and the service says so; the rlimits still hold.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("enclave.sandbox")
ROOT = Path("/sys/fs/cgroup")
GROUP = "enclave-sandbox"
_OOM_KILL = re.compile(r"^oom_kill (\d+)$", re.M)


class Cgroups:
    def __init__(self, version: int, memory: Path, pids: Path) -> None:
        self.version = version
        self.memory = memory  # the parent of every sandbox's memory cgroup
        self.pids = pids

    @classmethod
    def detect(cls, root: Path = ROOT) -> Cgroups | None:
        try:
            if (root / "cgroup.controllers").exists():
                controllers = (root / "cgroup.controllers").read_text().split()
                if not {"memory", "pids"} <= set(controllers):
                    return None
                parent = root / GROUP
                parent.mkdir(exist_ok=True)
                (root / "cgroup.subtree_control").write_text("+memory +pids")
                (parent / "cgroup.subtree_control").write_text("+memory +pids")
                return cls(2, parent, parent)
            if (root / "memory").is_dir() and (root / "pids").is_dir():
                memory, pids = root / "memory" / GROUP, root / "pids" / GROUP
                memory.mkdir(exist_ok=True)
                pids.mkdir(exist_ok=True)
                return cls(1, memory, pids)
        except OSError as exc:
            log.warning("no cgroups for the sandbox (%s): per-process rlimits only", exc)
        return None

    def prepare(self, name: str, memory_bytes: int, processes: int) -> list[Path]:
        """Create (or reset) the sandbox's cgroup; the cgroup.procs files to join."""
        memory, pids = self.memory / name, self.pids / name
        memory.mkdir(exist_ok=True)
        pids.mkdir(exist_ok=True)
        if self.version == 2:
            (memory / "memory.max").write_text(str(memory_bytes))
            swap = memory / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
            (pids / "pids.max").write_text(str(processes))
            return [memory / "cgroup.procs"]
        (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
        (pids / "pids.max").write_text(str(processes))
        return [memory / "cgroup.procs", pids / "cgroup.procs"]

    def oom_kills(self, name: str) -> int:
        """How many processes the memory limit has killed in this cgroup so far."""
        path = self.memory / name / ("memory.events" if self.version == 2 else "memory.oom_control")
        try:
            found = _OOM_KILL.search(path.read_text())
        except OSError:
            return 0
        return int(found.group(1)) if found else 0


def join_command(procs: list[Path]) -> list[str]:
    """A prefix that moves the process into the cgroups before anything runs, then execs on."""
    script = "".join(f'echo $$ > "{p}" && ' for p in procs) + 'exec "$@"'
    return ["sh", "-c", script, "sh"]
