"""The program that runs INSIDE the sandbox, before and after the untrusted code.

It is handed to the sandbox's own Python (`python3 -I -S -c <this source> <job file>`), so
it uses the standard library only and imports nothing of the platform. It:

1. makes itself non-dumpable (the untrusted code, same uid, cannot read its memory or
   write to its descriptors through /proc),
2. writes the session's input files into the work dir (a tmpfs) and the code to /tmp,
3. runs the code with stdout and stderr on pipes it reads with a cap, and a wall-clock
   deadline of its own (the service has a harder one behind it),
4. kills every other process of the sandbox when the code is done (`kill(-1)`: nothing
   left running in the background, no pipe held open); it is the pid namespace's init, so
   the code cannot kill it, and when it exits the kernel ends whatever is left,
5. reports one JSON document on its stdout: exit status, output, and the files that the
   code created or changed in the work dir (bounded in number and size).

Nothing it reports is trusted by the service beyond its size: the code could forge it,
but only about itself.
"""

from __future__ import annotations

# Few and cheap imports: every millisecond here is in each run's start-up (no subprocess,
# hashlib or signal module: posix_spawn, stat signatures and plain numbers do).
import binascii
import json
import os
import select
import sys
import time

WORK = "/work"
CHUNK = 65536
SIGKILL = 9
# Python ignores these two; the code gets them back at their defaults (Linux numbers).
SIGPIPE, SIGXFSZ = 13, 25


def _non_dumpable() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except Exception:
        pass


def _kill_others() -> None:
    try:  # noqa: SIM105 - contextlib would cost an import in every run
        os.kill(-1, SIGKILL)  # every process we may signal but ourselves (and init)
    except OSError:
        pass


def _signature(path: str) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _write_inputs(files: list[dict[str, str]]) -> dict[str, tuple[int, int, int]]:
    written = {}
    for item in files:
        rel = os.path.normpath(item["path"])
        if rel.startswith(("/", "..")):
            continue  # the service refuses these; never trust a path blindly here either
        dest = os.path.join(WORK, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(binascii.a2b_base64(item["content_b64"]))
        written[rel] = _signature(dest)
    return written


def _command(job: dict[str, object]) -> list[str]:
    code = str(job["code"])
    if job["language"] == "python":
        path = "/tmp/main.py"
        argv = ["python3", "-s", path]
    else:
        path = "/tmp/main.sh"
        argv = ["bash", "--noprofile", "--norc", path]
    with open(path, "w", encoding="utf-8") as f:
        f.write(code)
    return argv


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode()


def _run(argv: list[str], timeout_s: float, cap: int) -> dict[str, object]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": WORK,
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONPATH": WORK,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    null = os.open("/dev/null", os.O_RDONLY)
    os.chdir(WORK)
    # The child gets /dev/null and the two pipes as 0, 1, 2, and nothing else of ours
    # (Python's own descriptors are close-on-exec); a session of its own.
    pid = os.posix_spawnp(
        argv[0],
        argv,
        env,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, null, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ],
        setsid=True,
        setsigdef=(SIGPIPE, SIGXFSZ),
    )
    for fd in (null, out_w, err_w):
        os.close(fd)
    out = {out_r: bytearray(), err_r: bytearray()}
    open_fds = set(out)
    deadline = time.monotonic() + timeout_s
    timed_out = exceeded = False
    status = None
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        # Wake now and then: a background process may hold the pipes after the code exits.
        ready, _, _ = select.select(list(open_fds), [], [], min(left, 0.05))
        for fd in ready:
            data = os.read(fd, CHUNK)
            if not data:
                open_fds.discard(fd)
                continue
            buf = out[fd]
            room = cap - len(buf)
            buf += data[:room]
            if len(data) > room:
                exceeded = True
        if exceeded:
            break
        if status is None:
            status = _reap(pid)
            if status is not None:
                # The code is done: whatever it left in the background goes with it.
                _kill_others()
    _kill_others()
    while status is None:
        status = _reap(pid, block=True)
    return {
        "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "timed_out": timed_out,
        "output_exceeded": exceeded,
        "stdout_b64": _b64(bytes(out[out_r])),
        "stderr_b64": _b64(bytes(out[err_r])),
    }


def _reap(pid: int, block: bool = False) -> int | None:
    """Reap every child that ended (as pid 1, orphans are ours too); the code's status."""
    status = None
    while True:
        try:
            done, code = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return status
        if done == 0:
            return status
        if done == pid:
            status = code
            if block:
                return status


def _collect(
    inputs: dict[str, tuple[int, int, int]], max_count: int, max_bytes: int
) -> tuple[list[object], bool]:
    files: list[object] = []
    total = 0
    truncated = False
    for root, dirs, names in os.walk(WORK, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, WORK)
            try:
                if os.path.islink(full) or not os.path.isfile(full):
                    continue
                if inputs.get(rel) == _signature(full):
                    continue  # an input the code left as it was
                rel.encode("utf-8")  # a name that is not UTF-8 cannot be reported
                if len(rel) > 255 or len(files) >= max_count:
                    truncated = True
                    continue
                with open(full, "rb") as f:
                    data = f.read(max_bytes - total + 1)
            except UnicodeEncodeError:
                truncated = True
                continue
            except OSError:
                continue
            if len(data) > max_bytes - total:
                truncated = True
                continue
            total += len(data)
            files.append({"path": rel, "content_b64": _b64(data)})
    return files, truncated


def main() -> None:
    _non_dumpable()
    if len(sys.argv) > 1:  # a file (Docker), else stdin (bubblewrap: a warm sandbox waits)
        with open(sys.argv[1], encoding="utf-8") as f:
            job = json.load(f)
    else:
        data = sys.stdin.buffer.read()
        if not data:  # the service went, or let this warm sandbox go: nothing to run
            return
        job = json.loads(data)
    try:
        inputs = _write_inputs(job.get("files", []))
        argv = _command(job)
    except OSError as exc:  # e.g. the files do not fit in the work dir
        message = f"the sandbox could not write the files in: {exc}\n".encode()
        report = {"setup_error": True, "stderr_b64": _b64(message)}
        sys.stdout.write(json.dumps(report))
        return
    report = _run(argv, float(job["timeout_s"]), int(job["output_bytes"]))
    files, truncated = _collect(inputs, int(job["files_count"]), int(job["files_bytes"]))
    report["files"] = files
    report["files_truncated"] = truncated
    sys.stdout.write(json.dumps(report))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
