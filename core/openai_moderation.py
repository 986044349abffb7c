"""The OpenAI moderation endpoint (`/v1/moderations`) as a Moderator.

Its configuration model is the `openai` section of a moderation policy file, which another
module loads and passes in already parsed.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated

import openai
from openai.types import ModerationCreateResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from core.moderation import Action, Direction, Finding, ModerationUnavailable, Verdict

log = logging.getLogger(__name__)

DEFAULT_MODEL = "omni-moderation-latest"


def _not_redact(action: Action) -> Action:
    if action is Action.REDACT:
        raise ValueError(
            "the openai moderator cannot redact (the endpoint does not say where in the text "
            "a category applies); use block or flag"
        )
    return action


_OpenAIAction = Annotated[Action, AfterValidator(_not_redact)]


class CategoryConfig(BaseModel):
    """How one of the endpoint's categories is treated.

    Attributes:
        threshold: When set, the category counts as flagged when its score is at least this,
            whatever the endpoint's own boolean says; when None, the boolean decides.
        action: What a flagged category asks for; None for the section's default_action.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    action: _OpenAIAction | None = None


class OpenAIModerationConfig(BaseModel):
    """The `openai` section of a moderation policy.

    Actions are block or flag: redact is refused when the policy is loaded, because the
    endpoint scores the whole text and cannot say which part to replace.

    Attributes:
        model: The moderation model, overriding the one the moderator is built with.
        default_action: The action for a flagged category without an entry of its own.
        categories: Per category, by OpenAI's name ("harassment/threatening", "self-harm").
            Any name is accepted, since the endpoint adds categories over time.
        directions: The directions checked; texts going the other way pass untouched.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = None
    default_action: _OpenAIAction = Action.BLOCK
    categories: dict[str, CategoryConfig] = Field(default_factory=dict)
    directions: tuple[Direction, ...] = (Direction.INPUT, Direction.OUTPUT)


class _Result(BaseModel):
    """The part of one moderation result this moderator reads, keyed by OpenAI's names."""

    # The boolean is null for categories a legacy model does not cover ("illicit").
    categories: dict[str, bool | None]
    category_scores: dict[str, float | None]


class _Response(BaseModel):
    results: list[_Result] = Field(min_length=1, max_length=1)  # one input, one result


class OpenAIModerator:
    """Moderator "openai": OpenAI's moderation endpoint, through `openai.AsyncOpenAI`.

    One finding per flagged category, with its score and its configured action (BLOCK or
    FLAG); the text itself is never changed. The whole text goes out as one input. Any
    failure (an HTTP error after the client's retries, a timeout, no connection, an answer
    that does not parse) raises ModerationUnavailable.
    """

    name: str = "openai"

    def __init__(
        self,
        *,
        client: openai.AsyncOpenAI,
        model: str = DEFAULT_MODEL,
        config: OpenAIModerationConfig | None = None,
    ) -> None:
        self._client = client
        self._config = config or OpenAIModerationConfig()
        self.model = self._config.model or model

    async def check(self, text: str, *, direction: Direction) -> Verdict:
        """The verdict on `text`; see the class docstring."""
        if direction not in self._config.directions:
            return Verdict(text)
        try:
            response = await self._client.moderations.create(model=self.model, input=text)
            result = _parse(response)
        except openai.APIStatusError as exc:
            raise self._unavailable(f"HTTP {exc.status_code}", exc) from exc
        except openai.APITimeoutError as exc:
            raise self._unavailable("timeout", exc) from exc
        except openai.APIConnectionError as exc:
            raise self._unavailable("connection error", exc) from exc
        except openai.OpenAIError as exc:
            raise self._unavailable(type(exc).__name__, exc) from exc
        except (json.JSONDecodeError, ValidationError) as exc:
            raise self._unavailable("malformed response", exc) from exc
        return Verdict(text, tuple(self._findings(result)))

    def _findings(self, result: _Result) -> list[Finding]:
        findings = []
        for name in dict.fromkeys([*result.category_scores, *result.categories]):
            score = result.category_scores.get(name)
            entry = self._config.categories.get(name, CategoryConfig())
            if entry.threshold is not None:
                flagged = score is not None and score >= entry.threshold
            else:
                flagged = bool(result.categories.get(name))
            if flagged:
                action = entry.action or self._config.default_action
                findings.append(Finding(self.name, name, action, score))
        return findings

    def _unavailable(self, reason: str, exc: Exception) -> ModerationUnavailable:
        log.warning("openai moderation (%s) unavailable: %s: %s", self.model, reason, exc)
        return ModerationUnavailable(f"openai moderation: {reason}")


def _parse(response: ModerationCreateResponse) -> _Result:
    # The SDK builds responses without validating them: a body that is not a JSON object
    # comes back as is, and a model's missing or mistyped fields only show here. by_alias
    # keeps OpenAI's names ("self-harm"); categories the SDK does not know yet are extra
    # fields of its models, which the dump includes.
    payload: object = response
    if isinstance(response, BaseModel):
        payload = response.model_dump(by_alias=True, warnings=False)
    return _Response.model_validate(payload).results[0]
