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
    ModelFailure.INTERRUPTED: "My answer was cut off before the end (the model service "
    "stopped sending it). Please ask again.",
}

ATTACHMENTS_OFF = "I cannot read attachments here; please send your message as text."
UNEXPECTED_FAILURE = "Something went wrong on my side; your message is saved. Please try again."

TRUNCATED_MARKER = "\n[… message truncated to fit the context window …]"

SUMMARY_PREFIX = "Summary of the earlier part of this conversation:"

RESET_DONE = "Started a fresh conversation. Earlier messages are kept but no longer in context."

PERSONA_SET = "This {where} now uses the persona *{name}*: {description}"
PERSONA_CURRENT = "Current persona: *{name}*: {description}\nChange it with /persona NAME."
PERSONAS_HEADER = "Personas (switch with /persona NAME):"
PERSONA_IN_USE = " (in use)"
PERSONA_UNKNOWN = "There is no persona called '{name}'. Available: {available}."

ATTACHMENT_ONLY = "I can't see stickers; please write your question as text."

UNKNOWN_COMMAND = "Unknown command /{name}. Available commands: {available}."

USAGE_REPORT = (
    "Your usage: today {today_tokens:,} tokens in {today_turns}; "
    "last 30 days {month_tokens:,} tokens in {month_turns}"
    "{cost}. This conversation: {conversation_tokens:,} tokens."
)

FORGET_ASK = (
    "/forget deletes for good what I keep about you on this platform, in every chat:\n"
    "- your messages and my answers to them; where nobody else talks to me (a direct chat, "
    "your own threads), the whole conversation and its summary\n"
    "- the images and files you sent, moderation flags on your messages, and your usage "
    "records{usage_kept}\n"
    "- summaries of shared conversations that include your words (I rebuild them without "
    "yours)\n"
    "Other people's messages stay, and so do the admins' access-list entries about you.\n"
    "To go ahead, send /forget confirm"
)
FORGET_USAGE_KEPT = " (except today's token counts, which the daily budget needs)"
FORGET_DONE = (
    "Done: I deleted what I kept about you on this platform. I no longer remember our "
    "conversations."
)
FORGET_DONE_COUNTED = (
    "Done: I deleted {messages} (yours and my answers), {files}, and {conversations} in "
    "full, with everything else I kept about you on this platform. I no longer remember our "
    "conversations."
)
FORGET_UNAVAILABLE = "Sorry, /forget needs the bot's database. Ask one of the bot's admins."

EMPTY_REPLY = "The model returned an empty answer. Please rephrase your message or try again."

# Sent to the model (not the user) when a turn has used all its tool steps.
TOOL_STEPS_USED = (
    "You have used all the tool calls allowed for this message. Answer now with what you have."
)

# Access, limits and moderation. A refusal says what happened and what the user can do.
ACCESS_DENIED = (
    "Sorry, I'm not available to you here. If you think you should have access, "
    "ask one of the bot's admins."
)
ADMIN_ONLY = "Sorry, only the bot's admins can {what}. Ask one of them if it should change."
RATE_LIMITED = (
    "You're sending messages faster than I can take them (the limit is {limit} a minute). "
    "Please try again {wait}."
)
BUDGET_USED = "You've used today's budget of {limit:,} tokens. It renews at midnight UTC, {wait}."
INPUT_BLOCKED = (
    "I can't help with that message: it was stopped by this workspace's content policy. "
    "It was not sent to the model."
)
OUTPUT_RETRACTED = "I withdrew my answer: it did not pass this workspace's content policy."
MODERATION_UNAVAILABLE = (
    "I can't check messages right now (the moderation service is unavailable), so I did not "
    "send yours to the model. Please try again in a few minutes."
)
OUTPUT_UNCHECKED = (
    "I withheld my answer: the moderation service is unavailable, so it could not be checked. "
    "Please try again in a few minutes."
)

BAD_ARGUMENT = "I didn't understand that. Usage: {usage}."
SCOPE_CURRENT = "A conversation in this channel is per {scope}. Admins can change it with /scope."
SCOPE_SET = "From now on, a conversation in this channel is per {scope}."
TOOLS_CURRENT = (
    "Tools in use here: {tools} (the persona {persona} offers: {offered}). "
    "Admins can narrow them with /tools NAME,NAME, or /tools all."
)
TOOLS_SET = "This channel now uses these tools: {tools}."
TOOLS_SET_ALL = "This channel now uses all of the persona's tools."
TOOLS_SET_NONE = "This channel now uses no tools."
TOOLS_UNKNOWN = "There is no tool called {names}. Available: {available}."
LIMITS_CURRENT = "Per-user limits in this channel: {rpm}, {tokens}."
BUDGET_LEFT = "Today's budget here: {left:,} of {limit:,} tokens left."
BUFFER_SET = {
    True: "Replies in this channel now appear once moderation has checked them.",
    False: "Replies in this channel now stream as they are written, and are checked at the end.",
    None: "Replies in this channel now follow the persona's and the bot's default.",
}
MERGE_SET = {
    True: "Messages sent here while I'm writing an answer now get one answer together.",
    False: "Messages sent here while I'm writing an answer are now answered one by one.",
    None: "Messages sent here while I'm writing now follow the bot's default.",
}
MENTIONS_SET = {
    True: "In this channel I now answer only when mentioned, also in threads I'm part of.",
    False: "In this channel I now follow threads I'm part of without being mentioned.",
    None: "Mentions in this channel now follow the platform's default.",
}
ACCESS_EMPTY = "The access lists are empty: everyone may use the bot."
ACCESS_ADDED = "Added {kind} {value} to the {list} list."
ACCESS_REMOVED = "Removed {kind} {value} from the {list} list."
ACCESS_NOT_FOUND = "{kind} {value} is not on the {list} list (lists set in settings change there)."

KB_CURRENT = "Knowledge bases used here: {names}."
KB_SET = "Knowledge bases used here from now on: {names}."
KB_SET_DEFAULT = "This channel uses the persona's knowledge bases again."
