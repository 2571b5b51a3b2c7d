"""`enclave skills ...`: a tenant's SKILL.md skills in this site's home, for an operator
on the machine (the API, /v1/skills, does the same over the bus).

`upload` checks the folder whole before anything is written (a malformed SKILL.md is
refused naming the file and the problem, exit status 1) and replaces a skill of the
same name in one rename; agents see it at their next turn, no restart.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from libs.settings import Settings
from services.agent_runtime.adapters.skill_folders import SkillFolders
from services.agent_runtime.skills import MAX_UPLOAD_FILES, SkillError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("skills", help="a tenant's SKILL.md skills: list, upload, delete")
    s = p.add_subparsers(dest="skills_command", required=True)
    p_list = s.add_parser("list", help="the tenant's skills, and any malformed SKILL.md")
    p_list.add_argument("--tenant", required=True)
    p_up = s.add_parser("upload", help="add or replace a skill from a folder with a SKILL.md")
    p_up.add_argument("--tenant", required=True)
    p_up.add_argument("folder", type=Path)
    p_del = s.add_parser("delete", help="remove a skill")
    p_del.add_argument("--tenant", required=True)
    p_del.add_argument("name")


def read_folder(folder: Path) -> dict[str, bytes]:
    """A skill folder's files by relative path (hidden files and links left out)."""
    files: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(p.startswith(".") for p in relative.parts) or path.is_symlink():
            continue
        if path.is_file():
            files[relative.as_posix()] = path.read_bytes()
            if len(files) > MAX_UPLOAD_FILES:
                break
    return files


def run(args: argparse.Namespace, settings: Settings) -> int:
    folders = SkillFolders(settings.home / "skills")
    if args.skills_command == "list":
        listing = folders.listing(args.tenant)
        for header in listing.skills.values():
            print(json.dumps({"name": header.name, "description": header.description}))
        for error in listing.errors:
            print(f"malformed: {error}")
        return 0
    if args.skills_command == "upload":
        if not (args.folder / "SKILL.md").is_file():
            print(f"{args.folder}/SKILL.md: the folder has no SKILL.md")
            return 1
        try:
            skill = folders.install(args.tenant, read_folder(args.folder))
        except SkillError as exc:
            print(f"refused: {exc}")
            return 1
        print(f"skill {skill.header.name} installed for {args.tenant}")
        return 0
    if not folders.remove(args.tenant, args.name):
        print(f"no skill named {args.name} for {args.tenant}")
        return 1
    print(f"skill {args.name} deleted")
    return 0
