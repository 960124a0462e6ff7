"""Every sentence a person in the channel can read, in one place so the wording stays consistent."""

from __future__ import annotations

APOLOGY = "Sorry, something went wrong on my side while answering. The team running me has the details."
EMPTY_MENTION = "Hi! Mention me with a question, for example: @teambot what does HTTP 429 mean?"

# Slack's assistant pane
ASSISTANT_GREETING = "Hi! Ask me anything. Each thread here is its own conversation; /reset forgets this one."
ASSISTANT_PROMPTS_TITLE = "Try asking:"
SUGGESTED_PROMPTS = (
    "Summarise this text for me",
    "Explain what HTTP 429 means",
    "Help me write a polite reply",
)
THINKING_STATUS = "is thinking..."
#: A thread title is a line in a list: the first question, cut to this many characters.
TITLE_LENGTH = 60

RATE_LIMITED = "The AI service is busy, try again in {seconds} s."
RATE_LIMITED_NO_WAIT = "The AI service is busy right now, try again in a moment."
QUOTA_EXHAUSTED = "The AI service's quota or credit is used up; an admin must check the provider account."
KEY_REJECTED = "The API key was rejected; an admin must check OPENAI_API_KEY."
KEY_MISSING = "No API key is configured; an admin must set OPENAI_API_KEY."
FORBIDDEN = "The AI service refused this request (permission or region); an admin must check the account."
MODEL_NOT_FOUND = "The AI service does not know the model {model!r}; an admin must check OPENAI_MODEL."
BAD_REQUEST = "The AI service rejected the request ({detail}). An admin can find the details in the log."
CONTEXT_TOO_LONG = "The conversation is too long for the model even after trimming; try /reset to start over."
UNAVAILABLE = "The AI service is having trouble right now, try again in a minute."
TIMED_OUT = "The AI service took too long to answer, try again in a minute."
UNREACHABLE = "I cannot reach the AI service right now, try again in a minute."
MALFORMED = "The AI service sent an answer I could not read, try again."
EMPTY_COMPLETION = "The model returned an empty answer. Try rephrasing the question."
MESSAGE_CUT = "Your message was too long for me, so I read only its first part (about {tokens:,} tokens)."
INTERRUPTED_MARK = "\n\n_[The answer was cut off: {reason}]_"
#: The reason in INTERRUPTED_MARK when the bot is stopping (a restart, a deploy) in the middle of a reply.
STOPPING = "I had to stop (a restart); ask me again in a minute"
REPLY_NOT_SAVED = "I could not save this answer (a problem with my storage), so I will not remember it later."

RESET_DONE = "Forgot {count} message{s} of this conversation. The next mention starts fresh."

CONSOLE_BANNER = (
    "teambot console: talking to {model} at {base_url}. Conversation {key!r} is kept in {db}.\n"
    "Type a message and press Enter. /reset forgets the conversation, /usage shows what it cost, "
    "/system and /model change the prompt and model, /summary shows what is remembered of older turns, /exit quits."
)
CONSOLE_UNKNOWN_COMMAND = "Unknown command {command!r}. Commands: /reset, /usage, /system, /model, /summary, /exit."

RUN_NOTHING_CONFIGURED = (
    "run: no platform is configured. Set SLACK_BOT_TOKEN with SLACK_APP_TOKEN (Socket Mode) "
    "or SLACK_SIGNING_SECRET (HTTP mode) for Slack, or DISCORD_TOKEN for Discord. "
    "To try the bot without either, run: teambot console"
)


def plural(count: int) -> str:
    return "" if count == 1 else "s"


BUSY = "I'm answering a lot of questions right now; please try again in a minute."
CONVERSATION_BUSY = "Several questions here are already waiting for my answer; please ask again once I've caught up."
SLOW_DOWN = "Slow down a little: try again in {seconds} s."
NOT_ALLOWED = "Sorry, I'm not enabled here."
BUDGET_REACHED = "Sorry, {budget} is used up; it resets at {resets}."
BUDGET_SOFT_WARNING = (
    "Heads-up: {budget} is {percent}% used ({spent} of {limit}); new questions are refused once it is all "
    "used. It resets at {resets}."
)
USAGE_HEADER = "*Usage* (cost is an estimate, in US dollars):"
USAGE_LINE = (
    "• {who}: today {day_tokens:,} tokens (${day_cost:,.4f}), this month {month_tokens:,} tokens (${month_cost:,.4f})"
)
USAGE_BUDGET_LINE = "• {budget}: {spent} of {limit} used, {left} left; resets at {resets}"
USAGE_NO_BUDGETS = "• No budgets are set."
USAGE_FEEDBACK_LINE = "• Feedback on my answers in this channel this month: 👍 {up:,} · 👎 {down:,}"
USAGE_UNPRICED = "Some calls used a model missing from the price table; they are counted at $0."

ADMIN_ONLY = "Sorry, only {admins} can change that: it changes the bot for everyone in this channel."
#: Who counts as an admin, as each platform names it, for ADMIN_ONLY.
ADMINS_SLACK = "workspace admins"
ADMINS_DISCORD = "people with Manage Server"
SYSTEM_SHOW = "The system prompt here is:\n{prompt}"
SYSTEM_SET = "Done: this channel now uses the new system prompt."
SYSTEM_RESET = "Done: this channel is back to the default system prompt."
MODEL_SHOW = "This channel uses the model {model}. Allowed: {allowed}."
MODEL_SET = "Done: this channel now uses {model}."
MODEL_RESET = "Done: this channel is back to the default model, {model}."
MODEL_NOT_ALLOWED = "{model} is not on the list of allowed models: {allowed}."
UNKNOWN_COMMAND = "Unknown command {command!r}."

# Memory past the window (/summary)
SUMMARY_SHOW = "What I remember of the earlier part of this conversation:\n{summary}"
SUMMARY_NONE = (
    "Nothing to summarise yet: everything said here still fits in what I read each time. Once older messages "
    "fall out of that, I keep a short summary of them, and /summary shows it."
)
SUMMARY_OFF = "Summaries are switched off here (TEAMBOT_SUMMARIES=false): I remember only the recent messages."

# Answer feedback
FEEDBACK_UP = "Good answer"
FEEDBACK_DOWN = "Bad answer"
FEEDBACK_THANKS = "Thanks for the feedback!"
FEEDBACK_GONE = "That answer is no longer kept (the conversation was reset), so the feedback was not recorded."
