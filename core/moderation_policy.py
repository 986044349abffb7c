"""The moderation policy file (PARLEY_MODERATION_POLICY): one TOML file for every moderator.

```toml
[openai]                      # the moderation endpoint's categories
default_action = "block"
categories.self-harm = { action = "flag" }
categories.violence = { threshold = 0.7 }

[pii]                         # personal data: redact, block or flag, per kind
card = "block"

[[rules]]                     # keyword and regular-expression lists
name = "codenames"
keywords = ["project falcon"]
action = "redact"
```
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import ConfigError
from core.local_rules import PiiConfig, RuleConfig
from core.openai_moderation import OpenAIModerationConfig


class PolicyFile(BaseModel):
    """The whole file; every section is optional."""

    model_config = ConfigDict(extra="forbid")

    openai: OpenAIModerationConfig = Field(default_factory=OpenAIModerationConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    rules: list[RuleConfig] = Field(default_factory=list)


def load_policy_file(path: Path) -> PolicyFile:
    """Read and check the file; any problem is a one-line ConfigError naming it."""
    try:
        with path.open("rb") as handle:
            return PolicyFile.model_validate(tomllib.load(handle))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"PARLEY_MODERATION_POLICY: cannot read {path}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'file'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"PARLEY_MODERATION_POLICY: {path}: {problems}") from None
