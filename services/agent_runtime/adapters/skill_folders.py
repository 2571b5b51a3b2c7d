"""Skills from folders, per tenant, picked up without a restart.

Layout: `$ENCLAVE_HOME/skills/<tenant>/<skill>/SKILL.md` and the skill's resource files
beside it. A listing reads only each SKILL.md's front matter, and reads it again only when
the file's (mtime, size) changed; a skill's body and resources are read when it is loaded.
A malformed SKILL.md is left out of the listing and reported (`SkillListing.errors`), with
the file and the problem; loading it raises that `SkillError`.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.agent_runtime.skills import (
    FENCE,
    SKILL_FILE,
    Skill,
    SkillError,
    SkillHeader,
    check_upload,
    parse_header,
    parse_skill,
    split_front_matter,
)

MAX_RESOURCE_BYTES = 256 * 1024
MAX_RESOURCES = 64
MAX_FRONT_MATTER_LINES = 200


@dataclass
class SkillListing:
    skills: dict[str, SkillHeader] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _safe(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


class SkillFolders:
    def __init__(self, root: Path) -> None:
        self.root = root
        # path -> ((mtime_ns, size), header or the error)
        self._headers: dict[Path, tuple[tuple[int, int], SkillHeader | SkillError]] = {}

    def tenant_dir(self, tenant: str) -> Path:
        if not _safe(tenant):
            raise ValueError(f"`{tenant}` is not a tenant name")
        return self.root / tenant

    def listing(self, tenant: str) -> SkillListing:
        out = SkillListing()
        base = self.tenant_dir(tenant)
        if not base.is_dir():
            return out
        for folder in sorted(base.iterdir()):
            if folder.name.startswith("."):
                continue  # an upload being written
            path = folder / SKILL_FILE
            if not folder.is_dir() or not path.is_file():
                continue
            header = self._header(path, folder.name)
            if isinstance(header, SkillError):
                out.errors.append(str(header))
            else:
                out.skills[header.name] = header
        return out

    def headers(self, tenant: str) -> dict[str, SkillHeader]:
        return self.listing(tenant).skills

    def _header(self, path: Path, folder: str) -> SkillHeader | SkillError:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._headers.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        shown = self._shown(path)
        try:
            front = _front_matter(shown, path)
            found: SkillHeader | SkillError = parse_header(shown, front, folder)
        except SkillError as exc:
            found = exc
        self._headers[path] = (stamp, found)
        return found

    def _shown(self, path: Path) -> str:
        """The file's path as messages name it: from the skills root on."""
        try:
            return str(path.relative_to(self.root.parent))
        except ValueError:
            return str(path)

    def load(self, tenant: str, name: str) -> Skill:
        """The whole skill; raises `SkillError`, or KeyError when there is none."""
        if not _safe(name):
            raise KeyError(name)
        folder = self.tenant_dir(tenant) / name
        path = folder / SKILL_FILE
        if not path.is_file():
            raise KeyError(name)
        return parse_skill(
            self._shown(path), path.read_text(encoding="utf-8"), name, _resources(folder)
        )

    def resource(self, tenant: str, name: str, relative: str) -> str:
        """One resource file of a skill, as text; raises KeyError for anything that is not
        one (a path out of the folder, a link, SKILL.md itself, a file too big)."""
        skill = self.load(tenant, name)
        if relative not in skill.resources:
            raise KeyError(relative)
        path = self.tenant_dir(tenant) / name / relative
        return path.read_text(encoding="utf-8", errors="replace")

    def install(self, tenant: str, files: Mapping[str, bytes]) -> Skill:
        """Write an uploaded skill folder, checked whole first (`check_upload`: a
        malformed one raises `SkillError` naming the file and the problem, and nothing is
        written). It replaces a skill of the same name in one rename, so a listing sees
        the old folder or the new one, never half of one."""
        base = self.tenant_dir(tenant)
        skill = check_upload(files, self._shown(base))
        name = skill.header.name
        base.mkdir(parents=True, exist_ok=True)
        staging = base / f".{name}.{secrets.token_hex(4)}.new"
        try:
            for relative, content in files.items():
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            final = base / name
            old = base / f".{name}.{secrets.token_hex(4)}.old"
            if final.exists():
                final.rename(old)
            staging.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return skill

    def remove(self, tenant: str, name: str) -> bool:
        """Delete a skill's folder; False when there is none."""
        if not _safe(name) or name.startswith("."):
            return False
        folder = self.tenant_dir(tenant) / name
        if not (folder / SKILL_FILE).is_file():
            return False
        shutil.rmtree(folder)
        return True


def _front_matter(shown: str, path: Path) -> str:
    """Only the front matter is read for a listing (a body may be long)."""
    lines: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            lines.append(line)
            if i > 0 and line.strip() == FENCE:
                break
            if i >= MAX_FRONT_MATTER_LINES:
                break
    front, _ = split_front_matter(shown, "".join(lines))
    return front


def _resources(folder: Path) -> tuple[str, ...]:
    found: list[str] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            relative = str(path.relative_to(folder))
            if relative == SKILL_FILE or name.startswith(".") or path.is_symlink():
                continue
            if path.stat().st_size > MAX_RESOURCE_BYTES:
                continue
            found.append(relative)
            if len(found) >= MAX_RESOURCES:
                return tuple(found)
    return tuple(found)
