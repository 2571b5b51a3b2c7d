"""`load_skill`: the tool through which the model chooses a skill and reads its body, or one
of its resource files (progressive disclosure: until then it knows only the name and the
description, from skills.catalog_prompt)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from pydantic import Field

from services.agent_runtime.builtin_tools import ToolArgs
from services.agent_runtime.skills import Skill, SkillError, SkillHeader, loaded_text
from services.agent_runtime.tools import ToolContext, ToolFailed, ToolPorts


class SkillSource(Protocol):
    """Where a tenant's skills are (adapters/skill_folders.SkillFolders)."""

    def headers(self, tenant: str) -> dict[str, SkillHeader]: ...

    def load(self, tenant: str, name: str) -> Skill: ...

    def resource(self, tenant: str, name: str, relative: str) -> str: ...


class LoadSkillArgs(ToolArgs):
    name: str = Field(min_length=1, max_length=64, description="The skill's name.")
    resource: str | None = Field(
        default=None, max_length=255, description="A resource file of the skill to read."
    )


def visible(source: SkillSource, call: ToolContext) -> list[SkillHeader]:
    """The skills this call's agent may load."""
    headers = source.headers(call.ctx.tenant)
    if call.skills is None:
        return list(headers.values())
    return [headers[n] for n in call.skills if n in headers]


class LoadSkill:
    name = "load_skill"
    description = "Load a skill's instructions (or one of its resource files) by its name."
    arguments = LoadSkillArgs

    def __init__(self, source: SkillSource) -> None:
        self.source = source

    async def run(self, args: LoadSkillArgs, call: ToolContext, ports: ToolPorts) -> str:
        names = [h.name for h in visible(self.source, call)]
        if args.name not in names:
            raise ToolFailed(
                f"there is no skill `{args.name}` (skills: {', '.join(names) or 'none'})"
            )
        tenant = call.ctx.tenant
        try:
            if args.resource is not None:
                return await asyncio.to_thread(
                    self.source.resource, tenant, args.name, args.resource
                )
            skill = await asyncio.to_thread(self.source.load, tenant, args.name)
        except SkillError as exc:
            raise ToolFailed(str(exc)) from None
        except KeyError:
            raise ToolFailed(
                f"the skill `{args.name}` has no resource `{args.resource}`"
                if args.resource
                else f"the skill `{args.name}` is gone"
            ) from None
        return loaded_text(skill)
