"""SKILL.md skills: what a skill is, how its file is read, and what the model is shown.

A skill is a folder with a SKILL.md: YAML front matter (`name`, `description`, optional
`allowed-tools`; `license`, `metadata` and `version` are allowed and ignored) between `---`
lines, then a markdown body of instructions; any other file in the folder is a resource.
The model first sees only each skill's name and description (`catalog_prompt`); the body
and the resources load when it chooses the skill (the `load_skill` tool). Pure: the files
are read by adapters/skill_folders.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
MAX_DESCRIPTION = 1_024
MAX_BODY = 64 * 1024
FENCE = "---"
KNOWN_KEYS = {"name", "description", "allowed-tools", "license", "metadata", "version"}
SKILL_FILE = "SKILL.md"
# An uploaded folder (the API, `enclave skills upload`): at most this many files and bytes.
MAX_UPLOAD_FILES = 64
MAX_UPLOAD_FILE_BYTES = 256 * 1024
MAX_UPLOAD_BYTES = 2 * 1024 * 1024


class SkillError(ValueError):
    """A SKILL.md that cannot be used: the message names the file and the problem."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class SkillHeader:
    """What the model sees of a skill before it chooses it."""

    name: str
    description: str
    allowed_tools: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Skill:
    header: SkillHeader
    body: str
    resources: tuple[str, ...] = field(default_factory=tuple)


def split_front_matter(path: str, text: str) -> tuple[str, str]:
    """The front matter's YAML and the body."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != FENCE:
        raise SkillError(path, "it must begin with a `---` line opening the YAML front matter")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == FENCE:
            return "".join(lines[1:i]), "".join(lines[i + 1 :])
    raise SkillError(path, "the front matter is never closed by a `---` line")


def parse_header(path: str, front: str, folder: str) -> SkillHeader:
    try:
        data: Any = yaml.safe_load(front)
    except yaml.YAMLError as exc:
        raise SkillError(path, f"the front matter is not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise SkillError(path, "the front matter must be a YAML mapping")
    unknown = sorted(str(k) for k in set(data) - KNOWN_KEYS)
    if unknown:
        raise SkillError(path, f"unknown front matter key(s): {', '.join(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise SkillError(
            path, "`name` must be 1-64 lowercase letters, digits or hyphens (not at either end)"
        )
    if name != folder:
        raise SkillError(path, f"`name` is `{name}` but the skill's folder is `{folder}`")
    description = data.get("description")
    if not isinstance(description, str) or not description.strip():
        raise SkillError(path, "`description` is missing or empty")
    if len(description) > MAX_DESCRIPTION:
        raise SkillError(path, f"`description` is longer than {MAX_DESCRIPTION} characters")
    tools = data.get("allowed-tools")
    allowed: tuple[str, ...] | None = None
    if tools is not None:
        if isinstance(tools, str):
            tools = tools.replace(",", " ").split()
        if not isinstance(tools, list) or not all(isinstance(t, str) and t for t in tools):
            raise SkillError(path, "`allowed-tools` must be a list of tool names")
        allowed = tuple(tools)
    return SkillHeader(name=name, description=description.strip(), allowed_tools=allowed)


def parse_skill(path: str, text: str, folder: str, resources: tuple[str, ...] = ()) -> Skill:
    front, body = split_front_matter(path, text)
    header = parse_header(path, front, folder)
    if not body.strip():
        raise SkillError(path, "the body (the skill's instructions) is empty")
    if len(body) > MAX_BODY:
        raise SkillError(path, f"the body is longer than {MAX_BODY} characters")
    return Skill(header=header, body=body.strip(), resources=resources)


def catalog_prompt(headers: list[SkillHeader]) -> str:
    """The system text that tells the model which skills it may load."""
    if not headers:
        return ""
    listed = "\n".join(f"- {h.name}: {h.description}" for h in headers)
    return (
        "You have skills: instructions for particular tasks. Before such a task, call the "
        "`load_skill` tool with the skill's name to read them.\n" + listed
    )


def loaded_text(skill: Skill) -> str:
    """What the model reads when it loads a skill: the body, then the resources it may ask
    for by path."""
    text = skill.body
    if skill.resources:
        text += "\n\nResources (load one with `load_skill` and its `resource` path):\n"
        text += "\n".join(f"- {r}" for r in skill.resources)
    return text


def _safe_relative(path: str) -> bool:
    parts = path.split("/")
    return (
        bool(path)
        and not path.startswith("/")
        and "\\" not in path
        and all(p and not p.startswith(".") for p in parts)
    )


def check_upload(files: Mapping[str, bytes], shown: str = "") -> Skill:
    """A skill folder as uploaded (relative path -> content), checked whole before any of
    it is written: SKILL.md present and well formed (its `name` names the folder), every
    other file a text resource within the limits. Raises `SkillError` naming the file.
    `shown`: how messages name the folder (e.g. `skills/<tenant>`)."""
    if SKILL_FILE not in files:
        raise SkillError(f"{shown}/{SKILL_FILE}".lstrip("/"), "the folder has no SKILL.md")
    if len(files) > MAX_UPLOAD_FILES:
        raise SkillError(shown or ".", f"more than {MAX_UPLOAD_FILES} files")
    if sum(len(b) for b in files.values()) > MAX_UPLOAD_BYTES:
        raise SkillError(shown or ".", f"more than {MAX_UPLOAD_BYTES} bytes in all")
    top = f"{shown}/{SKILL_FILE}".lstrip("/")  # before its `name` says which folder
    try:
        text = files[SKILL_FILE].decode("utf-8")
    except UnicodeDecodeError:
        raise SkillError(top, "it is not UTF-8 text") from None
    front, _ = split_front_matter(top, text)
    try:
        data: Any = yaml.safe_load(front)
    except yaml.YAMLError:
        data = None
    name = data.get("name") if isinstance(data, dict) else None
    folder = name if isinstance(name, str) and NAME.match(name) else ""
    where = f"{shown}/{folder}".strip("/") if folder else shown
    path = f"{where}/{SKILL_FILE}".lstrip("/")
    resources = []
    for relative, content in sorted(files.items()):
        if relative == SKILL_FILE:
            continue
        at = f"{where}/{relative}".lstrip("/")
        if not _safe_relative(relative):
            raise SkillError(at, "a resource path must be relative, with no hidden or `..` parts")
        if len(content) > MAX_UPLOAD_FILE_BYTES:
            raise SkillError(at, f"a resource is larger than {MAX_UPLOAD_FILE_BYTES} bytes")
        resources.append(relative)
    return parse_skill(path, text, folder or "?", tuple(resources))
