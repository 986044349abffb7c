"""Every sentence Parley says to a chat user, in one place.

Keeping the wording here lets adapters stay translation-only and lets a later change of
tone (or a translation) touch one file.
"""

from __future__ import annotations

from core.errors import ModelFailure

MODEL_FAILURE = {
    ModelFailure.TIMEOUT: "The model took too long to answer. Please try again in a moment.",
    ModelFailure.RATE_LIMITED: "The model is busy right now (rate limited). "
    "Please try again in a minute.",
    ModelFailure.SERVER_ERROR: "The model service had an error. Please try again in a moment.",
    ModelFailure.UNREACHABLE: "I can't reach the model service right now. "
    "Please try again later; if it persists, tell the bot's admin.",
    ModelFailure.AUTHENTICATION: "The model service refused the bot's credentials. "
    "Please tell the bot's admin to check OPENAI_API_KEY.",
    ModelFailure.MODEL_NOT_FOUND: "The configured model does not exist on the model service. "
    "Please tell the bot's admin to check PARLEY_MODEL.",
    ModelFailure.REJECTED: "The model service rejected this request. "
    "Try /reset to start a fresh conversation.",
}

UNEXPECTED_FAILURE = "Something went wrong on my side; your message is saved. Please try again."

TRUNCATED_MARKER = "\n[… message truncated to fit the context window …]"

SUMMARY_PREFIX = "Summary of the earlier part of this conversation:"

RESET_DONE = "Started a fresh conversation. Earlier messages are kept but no longer in context."

PERSONA_SET = "This channel now uses the persona *{name}*: {description}"
PERSONA_CURRENT = "Current persona: *{name}*: {description}\nChange it with /persona NAME."
PERSONA_UNKNOWN = "There is no persona called '{name}'. Available: {available}."

UNKNOWN_COMMAND = "Unknown command /{name}. Available commands: {available}."

USAGE_REPORT = (
    "Your usage: today {today_tokens:,} tokens in {today_turns}; "
    "last 30 days {month_tokens:,} tokens in {month_turns}"
    "{cost}. This conversation: {conversation_tokens:,} tokens."
)

EMPTY_REPLY = "The model returned an empty answer. Please rephrase your message or try again."

# Sent to the model (not the user) when a turn has used all its tool steps.
TOOL_STEPS_USED = (
    "You have used all the tool calls allowed for this message. Answer now with what you have."
)
