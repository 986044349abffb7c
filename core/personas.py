"""Personas: who the bot is in a conversation, loaded from TOML files."""

from __future__ import annotations

import string
import tomllib
from collections.abc import Iterable, Iterator
from datetime import date
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from core.errors import ConfigError

TEMPLATE_VARIABLES = frozenset({"bot_name", "platform", "date", "user_name"})


class Persona(BaseModel):
    """A persona, as written in a TOML file.

    Attributes:
        name: Identifier used in /persona NAME (the file name without `.toml` by default).
        description: One line shown in /personas.
        system_prompt: Template; may use {bot_name}, {platform}, {date} and {user_name}.
        model: Model to use; empty means the PARLEY_MODEL setting.
        temperature: Sampling temperature; None leaves the server's default.
        max_reply_tokens: Reply length limit; None means the PARLEY_REPLY_TOKENS setting.
        tools: Names of the tools this persona may use.
        knowledge: Knowledge bases whose passages are put before the model (`parley kb`).
        buffer_output: Hold replies until output moderation passed them, instead of
            streaming; None leaves it to PARLEY_MODERATION_BUFFER (a channel may override).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    system_prompt: str = Field(min_length=1)
    model: str = ""
    temperature: float | None = Field(None, ge=0, le=2)
    max_reply_tokens: PositiveInt | None = None
    tools: tuple[str, ...] = ()
    knowledge: tuple[str, ...] = ()
    buffer_output: bool | None = None

    @field_validator("system_prompt")
    @classmethod
    def _known_variables(cls, prompt: str) -> str:
        try:
            used = {name for _, name, _, _ in string.Formatter().parse(prompt) if name}
        except ValueError as exc:
            raise ValueError(f"bad template ({exc}); write {{{{ and }}}} for braces") from None
        unknown = used - TEMPLATE_VARIABLES
        if unknown:
            raise ValueError(
                f"unknown variable(s) {', '.join(sorted(unknown))}; "
                f"available: {', '.join(sorted(TEMPLATE_VARIABLES))}"
            )
        return prompt

    def render_system_prompt(
        self, *, bot_name: str, platform: str, user_name: str, today: date
    ) -> str:
        """The system prompt with its variables filled in."""
        return self.system_prompt.format(
            bot_name=bot_name,
            platform=platform,
            user_name=user_name or "unknown",
            date=today.isoformat(),
        )


class PersonaCatalogue:
    """All personas by name; files in later directories replace earlier ones of the same name."""

    def __init__(self, personas: Iterable[Persona]) -> None:
        self._by_name: dict[str, Persona] = {p.name: p for p in personas}

    @classmethod
    def load(cls, *directories: Path | None) -> PersonaCatalogue:
        """Read every `*.toml` in the directories, in order (shipped first, the user's last)."""
        personas: dict[str, Persona] = {}
        for directory in directories:
            if directory is None:
                continue
            for path in sorted(directory.glob("*.toml")):
                persona = parse_persona(path)
                personas[persona.name] = persona
        return cls(personas.values())

    def get(self, name: str) -> Persona | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __iter__(self) -> Iterator[Persona]:
        return iter(self._by_name[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._by_name)


def parse_persona(path: Path) -> Persona:
    """Parse and check one persona file; any problem is a ConfigError naming the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        data.setdefault("name", path.stem)
        return Persona.model_validate(data)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"persona file {path}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'file'}: "
            + str(error["msg"]).removeprefix("Value error, ")
            for error in exc.errors()
        )
        raise ConfigError(f"persona file {path}: {problems}") from None


def resolve_persona(catalogue: PersonaCatalogue, default: Persona, *names: str | None) -> Persona:
    """The first of `names` (conversation's, then channel's) that exists, else the default.

    A stored name whose file was since removed falls back quietly: the conversation goes on.
    """
    for name in names:
        persona = catalogue.get(name) if name else None
        if persona is not None:
            return persona
    return default
