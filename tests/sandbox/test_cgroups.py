"""The cgroup adapter's file protocol. v1 runs for real in test_escapes (this host has v1);
v2 is checked on a directory laid out as the kernel lays out /sys/fs/cgroup."""

from __future__ import annotations

from pathlib import Path

from services.sandbox.adapters.cgroups import Cgroups, join_command


def test_v2_limits_and_oom_count(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    cg = Cgroups.detect(tmp_path)
    assert cg is not None and cg.version == 2
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids"
    (tmp_path / "enclave-sandbox" / "u7").mkdir()
    (tmp_path / "enclave-sandbox" / "u7" / "memory.swap.max").write_text("max")
    procs = cg.prepare("u7", 512 * 2**20, 64)
    group = tmp_path / "enclave-sandbox" / "u7"
    assert procs == [group / "cgroup.procs"]
    assert (group / "memory.max").read_text() == str(512 * 2**20)
    assert (group / "memory.swap.max").read_text() == "0"
    assert (group / "pids.max").read_text() == "64"
    assert cg.oom_kills("u7") == 0
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\n")
    assert cg.oom_kills("u7") == 2


def test_v2_without_the_controllers_is_no_cgroups(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io\n")
    assert Cgroups.detect(tmp_path) is None


def test_v1_limits(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "pids").mkdir()
    cg = Cgroups.detect(tmp_path)
    assert cg is not None and cg.version == 1
    procs = cg.prepare("u3", 2**20, 9)
    assert procs == [
        tmp_path / "memory" / "enclave-sandbox" / "u3" / "cgroup.procs",
        tmp_path / "pids" / "enclave-sandbox" / "u3" / "cgroup.procs",
    ]
    assert (tmp_path / "pids" / "enclave-sandbox" / "u3" / "pids.max").read_text() == "9"
    oom = tmp_path / "memory" / "enclave-sandbox" / "u3" / "memory.oom_control"
    oom.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n")
    assert cg.oom_kills("u3") == 5


def test_join_command_moves_itself_then_execs(tmp_path: Path) -> None:
    import subprocess

    procs = [tmp_path / "a.procs", tmp_path / "b.procs"]
    out = subprocess.run([*join_command(procs), "sh", "-c", "echo $$"], capture_output=True)
    pid = out.stdout.decode().strip()
    # The same process wrote its pid to both files and then became the command.
    assert procs[0].read_text().strip() == procs[1].read_text().strip() == pid
