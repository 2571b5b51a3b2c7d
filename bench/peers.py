"""Enclave against LiteLLM's proxy, in the same run, over the same engine (issue 9's table).

One stand-in engine, the 16-chunk instant engine served over HTTP by bench.standin, runs
as its own process. The same load client (bench.loadgen) then measures, one side at a
time while the others sit idle:

- the engine directly: what the engine and the load client cost by themselves;
- LiteLLM's proxy (`litellm[proxy]`, one worker, a master key) in front of that engine;
- Enclave with screening off (the packaged open policy): gateway, runtime, router and
  the `instant` worker, which runs the same InstantEngine behind the bus;
- Enclave with the default policy: the same, every request and its output screened;
- Enclave -> `openai_compat` pool, screening off: the gateway, runtime and router as
  above, but the pool is an `openai_compat` worker that calls the same HTTP stand-in
  engine LiteLLM's proxy fronts, so the two gateways are compared on exactly the same
  upstream (and one more HTTP hop than the `instant` worker).

Each side is measured twice, in the order A B C D D C B A, for half its time each (so
that a load drifting on a shared machine weighs on every side alike): a warm-up, one
client for a fixed time (time to first token and total, P50/P99), ten clients for a
fixed time (the same, and streamed requests/s); then the gateway's resident memory.

LiteLLM pins its own openai, pydantic and fastapi, so it is installed once per machine
into a venv of its own (`ENCLAVE_LITELLM_VENV`, by default
~/.cache/enclave/litellm-<version>), never into the project's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from bench.gateway import OPEN_POLICY, chat_body, running_platform, set_global_policy
from bench.loadgen import Result, run_clients
from bench.standin import MODEL
from tests.infra import REPO, free_port

LITELLM_VERSION = "1.106.2"
ONE_CLIENT_S = float(os.environ.get("BENCH_PEERS_ONE_S", "6"))
TEN_CLIENTS_S = float(os.environ.get("BENCH_PEERS_TEN_S", "8"))
WARM_UP_S = 1.0
LITELLM = "LiteLLM proxy"
ENGINE = "engine directly"
OPEN = "Enclave, screening off"
DEFAULT = "Enclave, default policy"
COMPAT = "Enclave -> openai_compat pool, screening off"
COMPAT_MODEL = "enclave-openai-http"  # routed to the openai_compat pool `openai-http`
MASTER_KEY = "sk-bench-litellm"
STARTED = [time.monotonic()]


@dataclass
class Side:
    name: str
    one: Result
    ten: Result
    gateway_rss: float | None = None  # MiB, the process the clients talk to
    all_rss: float | None = None  # MiB, every process of the side (not the engine's)


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants, in MiB."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


def litellm_venv() -> Path:
    """LiteLLM's own venv, made with pip from PyPI the first time (a few minutes)."""
    default = Path.home() / ".cache" / "enclave" / f"litellm-{LITELLM_VERSION}"
    venv = Path(os.environ.get("ENCLAVE_LITELLM_VENV", default))
    stamp = venv / ".installed"
    if not stamp.exists():
        print(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv} (once)", flush=True)
        log = venv.with_name(venv.name + ".install.log")
        venv.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            for cmd in (
                [sys.executable, "-m", "venv", "--clear", str(venv)],
                [str(venv / "bin" / "pip"), "install", f"litellm[proxy]=={LITELLM_VERSION}"],
            ):
                if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode:
                    raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
        stamp.touch()
    return venv


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: exited during start:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url}: not ready in {timeout:.0f}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def process(
    cmd: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(ready_url, proc, log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def standin_engine(tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.standin", "--port", str(port)]
    with process(cmd, f"http://127.0.0.1:{port}/v1/models", tmp / "engine.log") as proc:
        yield proc, port


@contextlib.contextmanager
def litellm_proxy(tmp: Path, engine_port: int) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    venv = litellm_venv()
    port = free_port()
    config = tmp / "litellm.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": MODEL,
                        "litellm_params": {
                            "model": f"openai/{MODEL}",
                            "api_base": f"http://127.0.0.1:{engine_port}/v1",
                            "api_key": "unused",
                        },
                    }
                ],
                "general_settings": {"master_key": MASTER_KEY},
            }
        )
    )
    # Without the local cost map it fetches one from the network at start.
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(tmp)),
        "LITELLM_LOG": "ERROR",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    cmd = [str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--num_workers", "1"]
    ready = f"http://127.0.0.1:{port}/health/liveliness"
    with process(cmd, ready, tmp / "litellm.log", env) as proc:
        yield proc, port


@dataclass
class Target:
    """Where one side is reached, and how its resident memory is read after load."""

    port: int
    key: str
    gateway: int | None  # the pid the clients talk to; None for the engine itself
    pids: list[int]
    policy: str = ""  # Enclave's global policy: "open" or "default"
    model: str = MODEL


def merged(a: Result, b: Result) -> Result:
    return Result(a.samples + b.samples, a.errors + b.errors, a.elapsed + b.elapsed)


def measure(name: str, target: Target, share: float) -> Side:
    """A warm-up, then one client and ten clients for `share` of their time."""
    body = chat_body(target.model)

    async def load(clients: int, seconds: float) -> Result:
        return await run_clients(
            "127.0.0.1", target.port, target.key, body, clients, seconds=seconds
        )

    asyncio.run(load(2, WARM_UP_S))
    one = asyncio.run(load(1, ONE_CLIENT_S * share))
    ten = asyncio.run(load(10, TEN_CLIENTS_S * share))
    print(
        f"  [{time.monotonic() - STARTED[0]:.0f} s] {name}: TTFT p50 "
        f"{one.pct('ttft', 0.5):.2f} ms at 1 client, {ten.rps:.0f} req/s at 10",
        flush=True,
    )
    return Side(name, one, ten)


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base != base or not base:
        return "-"
    ratio = value / base
    return f"{ratio:.3f}x" if ratio < 0.1 else f"{ratio:.2f}x"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(sides: list[Side]) -> str:
    """The latency rows per side and client count, then each side against LiteLLM."""
    lines = [
        "## Same run, same stand-in engine, same load client (ms; streamed req/s; MiB)",
        "| side | clients | n | err | TTFT p50 | TTFT p99 | total p50 | total p99 | req/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sides:
        for clients, r in ((1, s.one), (10, s.ten)):
            lines.append(
                f"| {s.name} | {clients} | {len(r.samples)} | {r.errors} | "
                f"{r.pct('ttft', 0.5):.2f} | {r.pct('ttft', 0.99):.2f} | "
                f"{r.pct('total', 0.5):.2f} | {r.pct('total', 0.99):.2f} | {r.rps:.0f} |"
            )
    base = next((s for s in sides if s.name == LITELLM), None)
    base_ttft = base.one.pct("ttft", 0.5) if base else None
    base_rps = base.ten.rps if base else None
    base_rss = base.gateway_rss if base else None
    lines += [
        "",
        "| side | TTFT p50, 1 client | xLiteLLM | req/s, 10 clients | xLiteLLM "
        "| gateway RSS | xLiteLLM | RSS, all its processes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in sides:
        ttft = s.one.pct("ttft", 0.5)
        lines.append(
            f"| {s.name} | {ttft:.2f} | {_ratio(ttft, base_ttft)} | {s.ten.rps:.0f} | "
            f"{_ratio(s.ten.rps, base_rps)} | {_mib(s.gateway_rss)} | "
            f"{_ratio(s.gateway_rss, base_rss)} | {_mib(s.all_rss)} |"
        )
    open_side = next((s for s in sides if s.name == OPEN), None)
    if open_side and base_ttft:
        share = open_side.one.pct("ttft", 0.5) / base_ttft
        verdict = "met" if share <= 0.15 else "NOT met"
        lines += [
            "",
            f"Enclave screening-off TTFT = {share:.2f}x LiteLLM's (target <= 0.15: {verdict})",
        ]
    return "\n".join(lines)


def compat_registry(engine_port: int) -> dict[str, object]:
    """An `openai_compat` pool on the stand-in engine's HTTP (a server of ours: no
    `provider`, so no grant is needed), and the model routed to it."""
    return {
        "pools": {
            "openai-http": {
                "engine": "openai_compat",
                "model": MODEL,
                "base_url": f"http://127.0.0.1:{engine_port}/v1",
                "timeout_s": 30,
            }
        },
        "models": [{"id": COMPAT_MODEL, "kind": "chat", "pool": "openai-http"}],
    }


def main() -> None:
    STARTED[0] = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp_dir, contextlib.ExitStack() as stack:
        tmp = Path(tmp_dir)
        engine, engine_port = stack.enter_context(standin_engine(tmp))
        targets = {ENGINE: Target(engine_port, "-", None, [engine.pid])}
        try:
            proxy, port = stack.enter_context(litellm_proxy(tmp, engine_port))
            targets[LITELLM] = Target(port, MASTER_KEY, proxy.pid, [proxy.pid])
        except (OSError, RuntimeError) as exc:
            print(f"LiteLLM not measured: {exc}", flush=True)
        plat, port = stack.enter_context(
            running_platform(
                (("worker-openai-http", "worker", "openai-http"),),
                (COMPAT_MODEL,),
                compat_registry(engine_port),
            )
        )
        pids = [p.pid for p in plat.procs.values()]
        gateway = plat.procs["gateway"].pid
        targets[OPEN] = Target(port, plat.admin_key, gateway, pids, "open")
        targets[COMPAT] = Target(port, plat.admin_key, gateway, pids, "open", COMPAT_MODEL)
        targets[DEFAULT] = Target(port, plat.admin_key, gateway, pids, "default")
        # Every side twice, in the order A B C D D C B A, each for half its time: a load
        # that drifts on the shared machine weighs on every side alike.
        sides: dict[str, Side] = {}
        policy = "open"  # as running_platform left it
        for name in [*targets, *reversed(targets)]:
            target = targets[name]
            if target.policy and target.policy != policy:
                policy = target.policy
                set_global_policy(plat, OPEN_POLICY if policy == "open" else None)
            half = measure(name, target, 0.5)
            if name in sides:
                half.one = merged(sides[name].one, half.one)
                half.ten = merged(sides[name].ten, half.ten)
            half.gateway_rss = rss_mib(target.gateway) if target.gateway else None
            half.all_rss = sum(rss_mib(pid) for pid in target.pids)
            sides[name] = half
    print()
    print(table(list(sides.values())))
    print(f"(bench.peers: {time.monotonic() - STARTED[0]:.0f} s in all)")


if __name__ == "__main__":
    main()
