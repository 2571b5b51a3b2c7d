"""SKILL.md skills: parsing, per-tenant folders, malformed files rejected with the file and
the problem, changes picked up without a restart, and progressive disclosure through the
`load_skill` tool."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from libs.context import RequestContext
from libs.events import FunctionCall, ToolCall
from services.agent_runtime.adapters.skill_folders import SkillFolders
from services.agent_runtime.skill_tool import LoadSkill, visible
from services.agent_runtime.skills import SkillError, catalog_prompt, parse_skill
from services.agent_runtime.tools import ToolContext, ToolRegistry

GOOD = """---
name: invoice-check
description: Check an invoice's totals and VAT before it is paid.
allowed-tools: [code_execution]
---
# Invoice check

1. Sum the lines with code_execution.
2. Compare with the total; see rates.md for VAT rates.
"""


def _write(root: Path, tenant: str, name: str, text: str, **resources: str) -> Path:
    folder = root / tenant / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "SKILL.md").write_text(text)
    for rel, content in resources.items():
        (folder / rel).write_text(content)
    return folder / "SKILL.md"


def test_a_good_skill_parses() -> None:
    skill = parse_skill("s/SKILL.md", GOOD, "invoice-check", ("rates.md",))
    assert skill.header.name == "invoice-check"
    assert skill.header.allowed_tools == ("code_execution",)
    assert skill.body.startswith("# Invoice check") and "---" not in skill.body
    assert "invoice-check: Check an invoice's" in catalog_prompt([skill.header])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("# no front matter\n", "must begin with a `---` line"),
        ("---\nname: x\n", "never closed"),
        ("---\nname: [unclosed\n---\nbody\n", "not valid YAML"),
        ("---\n- a list\n---\nbody\n", "must be a YAML mapping"),
        ("---\ndescription: d\n---\nbody\n", "`name` must be"),
        ("---\nname: Bad_Name\ndescription: d\n---\nbody\n", "`name` must be"),
        ("---\nname: other\ndescription: d\n---\nbody\n", "but the skill's folder is `s`"),
        ("---\nname: s\n---\nbody\n", "`description` is missing"),
        ("---\nname: s\ndescription: d\ncolour: red\n---\nbody\n", "unknown front matter key"),
        ("---\nname: s\ndescription: d\nallowed-tools: {a: 1}\n---\nb\n", "allowed-tools"),
        ("---\nname: s\ndescription: d\n---\n\n  \n", "body"),
    ],
)
def test_malformed_skills_name_the_file_and_the_problem(text: str, problem: str) -> None:
    with pytest.raises(SkillError) as err:
        parse_skill("skills/acme/s/SKILL.md", text, "s")
    assert str(err.value).startswith("skills/acme/s/SKILL.md: ")
    assert problem in str(err.value)


def test_folders_are_per_tenant_and_report_malformed_files(tmp_path: Path) -> None:
    root = tmp_path / "skills"
    _write(root, "acme", "invoice-check", GOOD, **{"rates.md": "DE 19%"})
    _write(root, "acme", "broken", "---\nname: broken\n---\nbody\n")
    _write(root, "globex", "other", GOOD.replace("invoice-check", "other"))
    folders = SkillFolders(root)
    listing = folders.listing("acme")
    assert list(listing.skills) == ["invoice-check"]
    assert listing.errors == ["skills/acme/broken/SKILL.md: `description` is missing or empty"]
    assert list(folders.headers("globex")) == ["other"]
    assert folders.listing("nobody").skills == {}
    skill = folders.load("acme", "invoice-check")
    assert skill.resources == ("rates.md",)
    assert folders.resource("acme", "invoice-check", "rates.md") == "DE 19%"
    for bad in ("../globex/other/SKILL.md", "SKILL.md", "/etc/passwd"):
        with pytest.raises(KeyError):
            folders.resource("acme", "invoice-check", bad)
    with pytest.raises(KeyError):
        folders.load("acme", "../globex")
    with pytest.raises(ValueError):
        folders.listing("..")


def test_changes_are_picked_up_without_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "skills"
    path = _write(root, "acme", "invoice-check", GOOD)
    folders = SkillFolders(root)
    assert folders.headers("acme")["invoice-check"].description.startswith("Check an")
    path.write_text(GOOD.replace("Check an invoice's", "Verify an invoice's"))
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    assert folders.headers("acme")["invoice-check"].description.startswith("Verify an")
    path.write_text("---\nname: invoice-check\n---\n")  # broken now: out of the listing
    os.utime(path, ns=(path.stat().st_mtime_ns + 2 * 10**9,) * 2)
    assert folders.listing("acme").skills == {}
    _write(root, "acme", "new-skill", GOOD.replace("invoice-check", "new-skill"))
    assert list(folders.headers("acme")) == ["new-skill"]


class _Ports:
    def __init__(self) -> None:
        self.audited: list[Any] = []

    async def audit(self, event: Any) -> None:
        self.audited.append(event)


def _call(**arguments: Any) -> ToolCall:
    return ToolCall(
        id="c", function=FunctionCall(name="load_skill", arguments=json.dumps(arguments))
    )


async def test_load_skill_discloses_the_body_only_when_chosen(tmp_path: Path) -> None:
    root = tmp_path / "skills"
    _write(root, "acme", "invoice-check", GOOD, **{"rates.md": "DE 19%"})
    _write(root, "acme", "secret-skill", GOOD.replace("invoice-check", "secret-skill"))
    folders = SkillFolders(root)
    registry = ToolRegistry.of([LoadSkill(folders)])
    ctx = RequestContext(tenant="acme", request_id="r")
    agent = ToolContext(ctx=ctx, skills=("invoice-check",))
    # What the model sees first: names and descriptions, no body.
    prompt = catalog_prompt(visible(folders, agent))
    assert "invoice-check" in prompt and "secret-skill" not in prompt and "Sum the" not in prompt
    ports: Any = _Ports()
    loaded = await registry.call(_call(name="invoice-check"), agent, ports)
    assert loaded.outcome == "ok" and "1. Sum the lines" in loaded.content
    assert "- rates.md" in loaded.content
    resource = await registry.call(_call(name="invoice-check", resource="rates.md"), agent, ports)
    assert resource.content == "DE 19%"
    # A skill the agent is not given, or another tenant's, does not load.
    hidden = await registry.call(_call(name="secret-skill"), agent, ports)
    assert hidden.outcome == "error" and "no skill `secret-skill`" in hidden.content
    other = ToolContext(ctx=RequestContext(tenant="globex", request_id="r"))
    assert (await registry.call(_call(name="invoice-check"), other, ports)).outcome == "error"
    missing = await registry.call(_call(name="invoice-check", resource="../x"), agent, ports)
    assert missing.outcome == "error" and "no resource" in missing.content
    assert [e.attrs["tool"] for e in ports.audited] == ["load_skill"] * 5


def test_an_uploaded_folder_is_checked_whole_then_installed(tmp_path: Path) -> None:
    folders = SkillFolders(tmp_path / "skills")
    skill = folders.install("acme", {"SKILL.md": GOOD.encode(), "ref/rates.md": b"20%"})
    assert skill.header.name == "invoice-check" and skill.resources == ("ref/rates.md",)
    assert list(folders.headers("acme")) == ["invoice-check"]
    assert folders.resource("acme", "invoice-check", "ref/rates.md") == "20%"
    # Replaced in one rename: the old resource is gone with the old folder.
    folders.install("acme", {"SKILL.md": GOOD.encode()})
    assert folders.load("acme", "invoice-check").resources == ()
    assert [p.name for p in (tmp_path / "skills" / "acme").iterdir()] == ["invoice-check"]


@pytest.mark.parametrize(
    ("files", "where", "problem"),
    [
        ({"SKILL.md": b"no front matter"}, "skills/acme/SKILL.md", "must begin with a `---`"),
        (
            {"SKILL.md": GOOD.replace("description: Check", "description:\n  -").encode()},
            "skills/acme/invoice-check/SKILL.md",
            "`description` is missing or empty",
        ),
        ({"notes.md": b"x"}, "skills/acme/SKILL.md", "the folder has no SKILL.md"),
        (
            {"SKILL.md": GOOD.encode(), "../escape.md": b"x"},
            "skills/acme/invoice-check/../escape.md",
            "must be relative",
        ),
    ],
)
def test_a_malformed_upload_is_refused_naming_the_file_and_nothing_is_written(
    tmp_path: Path, files: dict[str, bytes], where: str, problem: str
) -> None:
    folders = SkillFolders(tmp_path / "skills")
    with pytest.raises(SkillError) as err:
        folders.install("acme", files)
    assert err.value.path == where and problem in err.value.problem
    assert not (tmp_path / "skills" / "acme").exists() or not any(
        (tmp_path / "skills" / "acme").iterdir()
    )


def test_the_cli_uploads_lists_and_deletes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.agent_runtime import skills_cli
    from services.cli import main

    folder = tmp_path / "src" / "invoice-check"
    folder.mkdir(parents=True)
    (folder / "SKILL.md").write_text(GOOD)
    (folder / "rates.md").write_text("20%")
    monkeypatch.setenv("ENCLAVE_HOME", str(tmp_path / "home"))
    assert main(["skills", "upload", "--tenant", "acme", str(folder)]) == 0
    assert main(["skills", "list", "--tenant", "acme"]) == 0
    assert '"name": "invoice-check"' in capsys.readouterr().out
    (folder / "SKILL.md").write_text(GOOD.replace("name: invoice-check", "name: Bad Name"))
    assert main(["skills", "upload", "--tenant", "acme", str(folder)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("refused: skills/acme/SKILL.md: `name` must be")
    assert main(["skills", "delete", "--tenant", "acme", "invoice-check"]) == 0
    assert main(["skills", "delete", "--tenant", "acme", "invoice-check"]) == 1
    assert skills_cli.read_folder(folder).keys() == {"SKILL.md", "rates.md"}
