"""The program that runs INSIDE the sandbox, before and after the untrusted code.

It is handed to the sandbox's own Python (`python3 -I -S -c <this source> <job file>`), so
it uses the standard library only and imports nothing of the platform. It:

1. makes itself non-dumpable (the untrusted code, same uid, cannot read its memory or
   write to its descriptors through /proc),
2. writes the session's input files into the work dir (a tmpfs) and the code to /tmp,
3. runs the code with stdout and stderr on pipes it reads with a cap, and a wall-clock
   deadline of its own (the service has a harder one behind it),
4. kills every other process of the sandbox when the code is done (`kill(-1)`: nothing
   left running in the background, no pipe held open),
5. reports one JSON document on its stdout: exit status, output, and the files that the
   code created or changed in the work dir (bounded in number and size).

Nothing it reports is trusted by the service beyond its size: the code could forge it,
but only about itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time

WORK = "/work"
CHUNK = 65536


def _non_dumpable() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except Exception:
        pass


def _kill_others() -> None:
    with contextlib.suppress(OSError):
        os.kill(-1, signal.SIGKILL)  # every process we may signal but ourselves (and init)


def _write_inputs(files: list[dict[str, str]]) -> dict[str, str]:
    digests = {}
    for item in files:
        rel = os.path.normpath(item["path"])
        if rel.startswith(("/", "..")):
            continue  # the service refuses these; never trust a path blindly here either
        data = base64.b64decode(item["content_b64"])
        dest = os.path.join(WORK, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data)
        digests[rel] = hashlib.sha256(data).hexdigest()
    return digests


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
    child = subprocess.Popen(
        argv,
        cwd=WORK,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )
    assert child.stdout is not None and child.stderr is not None
    out = {child.stdout.fileno(): bytearray(), child.stderr.fileno(): bytearray()}
    open_fds = set(out)
    deadline = time.monotonic() + timeout_s
    timed_out = exceeded = exited = False
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
        if not exited and child.poll() is not None:
            # The code is done: whatever it left in the background goes with it.
            exited = True
            _kill_others()
    _kill_others()
    status = child.wait()
    return {
        "exit_code": status if status >= 0 else None,
        "signal": -status if status < 0 else None,
        "timed_out": timed_out,
        "output_exceeded": exceeded,
        "stdout_b64": base64.b64encode(bytes(out[child.stdout.fileno()])).decode(),
        "stderr_b64": base64.b64encode(bytes(out[child.stderr.fileno()])).decode(),
    }


def _collect(inputs: dict[str, str], max_count: int, max_bytes: int) -> tuple[list[object], bool]:
    files: list[object] = []
    total = 0
    truncated = False
    for root, dirs, names in os.walk(WORK, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, WORK)
            try:
                st = os.lstat(full)
                if not os.path.isfile(full) or os.path.islink(full):
                    continue
                if st.st_size > max_bytes - total or len(files) >= max_count:
                    truncated = True
                    continue
                with open(full, "rb") as f:
                    data = f.read(max_bytes - total + 1)
            except OSError:
                continue
            if inputs.get(rel) == hashlib.sha256(data).hexdigest():
                continue  # an input the code left as it was
            if len(data) > max_bytes - total:
                truncated = True
                continue
            total += len(data)
            files.append({"path": rel, "content_b64": base64.b64encode(data).decode()})
    return files, truncated


def main() -> None:
    _non_dumpable()
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    inputs = _write_inputs(job.get("files", []))
    report = _run(_command(job), float(job["timeout_s"]), int(job["output_bytes"]))
    files, truncated = _collect(inputs, int(job["files_count"]), int(job["files_bytes"]))
    report["files"] = files
    report["files_truncated"] = truncated
    sys.stdout.write(json.dumps(report))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
