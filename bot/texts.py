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
#: Shown while a reasoning model thinks, before its answer (TEAMBOT_SHOW_REASONING=status or full).
REASONING_STATUS = "Thinking…"
#: Heads the model's thinking where it is shown apart from the answer (TEAMBOT_SHOW_REASONING=full).
REASONING_HEADER = "Thinking:"
#: Where only part of the thinking fits.
REASONING_CUT = "…"
#: A thread title is a line in a list: the first question, cut to this many characters.
TITLE_LENGTH = 60

RATE_LIMITED = "The AI service is busy, try again in {seconds} s."
RATE_LIMITED_NO_WAIT = "The AI service is busy right now, try again in a moment."
QUOTA_EXHAUSTED = "The AI service's quota or credit is used up; an admin must check the provider account."
KEY_REJECTED = "The API key was rejected; an admin must check OPENAI_API_KEY."
KEY_MISSING = "No API key is configured; an admin must set OPENAI_API_KEY."
FORBIDDEN = "The AI service refused this request (permission or region); an admin must check the account."
MODEL_NOT_FOUND = "The AI service does not know the model {model!r}; an admin must check OPENAI_MODEL."
#: A 404 for the path, not the model: the base URL is wrong, most often for want of its /v1.
ENDPOINT_NOT_FOUND = (
    "The AI service has no chat endpoint at the configured address (HTTP 404); an admin must check "
    "OPENAI_BASE_URL, which usually ends in /v1."
)
#: The same for the log and `teambot check`, with the URL asked and the one to try.
ENDPOINT_NOT_FOUND_DETAIL = "HTTP 404 for {url}: the server has no such path ({answer}); the base URL {hint}"
ENDPOINT_TRY_V1 = "usually ends in /v1: try {suggestion}"
ENDPOINT_CHECK_ROOT = "must be the server's OpenAI-compatible API root"
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
#: A notice beside an answer whose prompt had to cut the conversation's last message, which crowded out the rest.
HISTORY_CUT = (
    "(The previous message was too long for me to reread whole: for this answer I saw only its beginning, "
    "and nothing said before it.)"
)
#: A start-up warning (the log): TEAMBOT_DISCORD_GUILD takes the commands out of every other server.
DISCORD_GUILD_CLEARS_GLOBAL = (
    "TEAMBOT_DISCORD_GUILD={guild} registers the slash commands in that server only and clears the global ones, "
    "so in the {count} other server{s} this bot is in {commands} disappear; unset it to "
    "register them everywhere"
)
# What a Discord mention sees around it (replies, threads, forwards)
#: Heads a forwarded message's content, as the model reads it.
DISCORD_FORWARDED = "[forwarded message]"
DISCORD_FORWARDED_FROM = "[forwarded message from {author}]"
#: Said once per channel beside an answer, when messages around the mention arrived empty.
DISCORD_CONTENT_HIDDEN = (
    "Note: I could not read some of the messages around your question (the one you replied to, or earlier "
    "messages in this thread), because Discord gives me only messages that mention me. To let me read them, an "
    "admin switches on Message Content Intent in the Discord Developer Portal (Bot, Privileged Gateway Intents) "
    "and sets TEAMBOT_DISCORD_MESSAGE_CONTENT=true. I answered from what I could see."
)
REPLY_NOT_SAVED = "I could not save this answer (a problem with my storage), so I will not remember it later."

RESET_DONE = "Forgot {count} message{s} of this conversation. The next mention starts fresh."

CONSOLE_BANNER = (
    "teambot console: talking to {model} at {base_url}. Conversation {key!r} is kept in {db}; the log goes to {log}.\n"
    "Type a message and press Enter. A pasted block of several lines is one message; to type one, put "
    '""" on a line of its own before and after it.\n'
    "/reset forgets the conversation, /usage shows what it cost, /system and /model change the prompt and model, "
    "/summary shows what is remembered of older turns. "
    "Ctrl-C stops an answer; /exit, Ctrl-D or Ctrl-C twice quits."
)
#: Where the console's log goes when it is not a file.
CONSOLE_LOG_STDERR = "stderr"
CONSOLE_RESUMED = "Resuming the earlier conversation ({count} message{s}); /reset forgets it."
CONSOLE_UNKNOWN_COMMAND = "Unknown command {command!r}. Commands: /reset, /usage, /system, /model, /summary, /exit."
CONSOLE_THINKING = "thinking\u2026"
CONSOLE_CANCELLED = "Stopped. That question is not kept in the conversation. Ctrl-C again quits."
CONSOLE_INTERRUPT_HINT = "Ctrl-C again quits (or type /exit)."
CONSOLE_APOLOGY = "Sorry, something went wrong on my side while answering; the details are in the log ({log})."
# The console's wording of the command answers: one person, one conversation, nothing to mention.
CONSOLE_RESET_DONE = "Forgot {count} message{s} of this conversation. The next message starts fresh."
CONSOLE_USAGE_HEADER = "Usage (cost is an estimate, in US dollars):"
CONSOLE_USAGE_SCOPE = "This console"
CONSOLE_SYSTEM_SET = "Done: this conversation now uses the new system prompt."
CONSOLE_SYSTEM_RESET = "Done: this conversation is back to the default system prompt."
CONSOLE_MODEL_SHOW = "This conversation uses the model {model}. Allowed: {allowed}."
CONSOLE_MODEL_SET = "Done: this conversation now uses {model}."
CONSOLE_MODEL_RESET = "Done: this conversation is back to the default model, {model}."
CONSOLE_MODEL_NOT_ALLOWED = (
    "{model} is not on the list of allowed models: {allowed}. Add it to TEAMBOT_MODELS (comma-separated) to allow it."
)

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
#: The scopes a /usage report lists on a chat platform, with their labels.
USAGE_SCOPE_CHANNEL = "This channel"
USAGE_SCOPE_USER = "You"
USAGE_SCOPE_WORKSPACE = "This workspace"
USAGE_LINE = (
    "• {who}: today {day_tokens:,} tokens (${day_cost:,.4f}), this month {month_tokens:,} tokens (${month_cost:,.4f})"
)
#: Added to a USAGE_LINE where the server reported them this month (a server that does not say shows neither).
USAGE_CACHE_PART = "; {share:.0%} of this month's prompt tokens came from the prompt cache"
USAGE_REASONING_PART = "; {tokens:,} of this month's tokens were reasoning"
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
#: Follows the model's name in MODEL_SHOW and MODEL_SET where a reasoning effort is chosen (for the channel, or
#: by TEAMBOT_REASONING_EFFORT).
MODEL_EFFORT = " with reasoning effort {effort}"
EFFORT_NOT_KNOWN = (
    "{effort!r} is not a reasoning effort. Use /model <model> [effort], the effort one of: {efforts}; "
    "leave it out for the default."
)
MODEL_RESET = "Done: this channel is back to the default model, {model}."
MODEL_NOT_ALLOWED = "{model} is not on the list of allowed models: {allowed}."
UNKNOWN_COMMAND = "Unknown command {command!r}."
#: /speak and /scope (bot.speak): the modes, in the words people read.
SPEAK_MODES = {
    "thread": "answers mentions, and every later message of a thread it answered in",
    "mention": "answers only when mentioned",
    "all": "answers every message here, mentioned or not",
}
SPEAK_SHOW = "Here the bot {what} (`{mode}`). Choose with /speak thread, /speak mention or /speak all."
SPEAK_SET = "Done: here the bot now {what} (`{mode}`)."
SPEAK_NOT_KNOWN = "{mode!r} is not a speak mode. Use /speak thread, /speak mention or /speak all."
SCOPES = {
    "channel": "everybody here shares one conversation",
    "person": "each person here has a conversation of their own (threads stay shared)",
}
SCOPE_SHOW = "Here {what} (`{scope}`). Choose with /scope channel or /scope person."
SCOPE_SET = "Done: here {what} from now on (`{scope}`)."
SCOPE_NOT_KNOWN = "{scope!r} is not a conversation scope. Use /scope channel or /scope person."

# Start-up: the settings file and the names in it
BASE_URL_WITH_PATH = "ends in /chat/completions, which teambot adds itself: set it to {root}"
ENV_FILE_MISSING = "--env-file {path} {what}"
ENV_FILE_NOT_TEXT = "{path}, line {line}: not UTF-8 text; save the file as UTF-8"
ENV_LINE_ERROR = "{path}, line {line}{name}: {why}"
ENV_LINE_NO_EQUALS = "no '=' in this line; write NAME=value"
ENV_LINE_OPEN_QUOTE = "the value's opening {quote} is never closed"
ENV_LINE_UNREADABLE = "cannot be read as NAME=value (check its quotes)"
SETTING_IN_FILE = "{path}, line {line}"
SETTING_IN_ENVIRONMENT = "the environment"
UNKNOWN_SETTING = "unknown setting {name} (in {where}) is ignored"
UNKNOWN_SETTING_CLOSEST = "; did you mean {closest}?"
UNKNOWN_SETTING_NO_MATCH = "; .env.example lists every setting"

# --- for the person running teambot: `teambot check` and the platform connection lines in the log -------------
CHECK_SLACK_NOT_CONFIGURED = (
    "not configured: set SLACK_BOT_TOKEN, and SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode)"
)
CHECK_DISCORD_NOT_CONFIGURED = "not configured: set DISCORD_TOKEN"
CHECK_SLACK_SCOPES_OK = "granted: {scopes}"
CHECK_SLACK_SCOPES_MISSING = (
    "the bot token lacks {missing}: add them from deploy/slack-manifest-*.yml (OAuth & Permissions) and reinstall "
    "the app; meanwhile the bot answers without what they give"
)
CHECK_SLACK_SCOPES_UNLISTED = "Slack did not list the token's scopes; thread reading is checked on first use"
SLACK_TOKEN_REFUSED = "Slack refused {setting} ({error}): {hint}; the Slack adapter is stopped"
SLACK_BOT_TOKEN_HINT = "check the bot token (xoxb-...) and that the app is installed in the workspace"
SLACK_APP_TOKEN_HINT = "check the app-level token (xapp-...) and that it has the connections:write scope"
#: `teambot check`: the Message Content intent, asked for (TEAMBOT_DISCORD_MESSAGE_CONTENT) and granted (portal).
CHECK_DISCORD_CONTENT_ON = "on: replied-to messages, threads and forwards are read whole"
CHECK_DISCORD_CONTENT_REFUSED = (
    "TEAMBOT_DISCORD_MESSAGE_CONTENT=true, but Message Content Intent is off in the Developer Portal, so Discord "
    "will refuse the connection: switch it on (Bot, Privileged Gateway Intents) or unset the setting"
)
CHECK_DISCORD_CONTENT_OFF = (
    "off: the bot reads only messages that mention it; the messages people reply to and a thread's earlier "
    "messages arrive empty. To read them, switch on Message Content Intent in the Developer Portal (Bot, "
    "Privileged Gateway Intents) and set TEAMBOT_DISCORD_MESSAGE_CONTENT=true"
)
CHECK_DISCORD_CONTENT_NOT_ASKED = (
    "on in the Developer Portal but not asked for: set TEAMBOT_DISCORD_MESSAGE_CONTENT=true to read replied-to "
    "messages and threads"
)
DISCORD_TOKEN_REFUSED = (
    "Discord refused DISCORD_TOKEN (401 Unauthorized): copy the bot token again from the Developer Portal "
    "(Bot, Reset Token); the Discord adapter is stopped"
)

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

# Tools (bot.tools): what people see of the tool loop, and what the model reads as a tool's result
TOOL_STATUS = "Looking up {tools}…"
TOOLS_USED = "_Tools used: {tools}_"
TOOLS_STOPPED = "(I stopped calling tools after {rounds} rounds; this answer is based on what I had found by then.)"
#: These go to the model as the tool's result, so it can tell the person (or try again).
TOOL_OUTPUT_CUT = "\n[The tool's output was cut here: only its first {tokens} tokens are shown.]"
TOOL_UNKNOWN = "Error: there is no tool named {tool!r} available here."
TOOL_BAD_ARGUMENTS = "Error: the arguments were not a valid JSON object ({why}); call the tool again with valid JSON."
TOOL_FAILED = "Error: the tool {tool} failed: {why}"
TOOL_TIMED_OUT = "Error: the tool {tool} did not answer within {seconds:g} seconds."
TOOL_CRASHED = "Error: the tool {tool} failed unexpectedly."
TOOL_DENIED = "The person who asked did not approve this call of {tool}, so it was not run. Do not call it again now."
TOOL_NO_OUTPUT = "(the tool returned no output)"
CONSOLE_TOOL_STATUS = "teambot: {status}"
CONSOLE_APPROVE = "teambot wants to run {tool} with {arguments}. Run it? [y/N] "

# What the bot can see: files on a message (bot.context)
#: The header and footer around a text file's content in the question.
FILE_HEADER = "[File: {name}]"
FILE_FOOTER = "[End of file: {name}]"
FILE_CUT = "[… the rest of {name} is left out: it is longer than fits (about {shown:,} of {total:,} tokens shown)]"
#: A PDF's pages keep their markers, so the model can say where it read something.
PDF_PAGE = "--- page {number} ---"
PDF_NO_TEXT = "[This PDF has no text I can read: its pages may be scanned images.]"
#: Where an image sits in the question; the model gets the image itself right after it.
IMAGE_MARK = "[Image: {name}]"
IMAGE_NOT_SHOWN = "[Image: {name} (not shown: {why})]"
IMAGE_GONE = "no longer kept"
IMAGE_OVER_CAP = "at most {count} images per question"
IMAGE_BLIND = "the model cannot see images"
IMAGE_OFF = "images are switched off"
#: In the question, for the model: a file it does not get, and why.
FILE_NOT_READ_MARK = "[File: {name} (not read: {why})]"
#: The one line beside the answer naming the files the bot could not read.
FILES_NOT_READ = "I could not read {files}."
FILE_NOT_READ_ITEM = "{name} ({why})"
FILE_TOO_BIG = "{size} is over the {limit} limit"
FILE_TYPE = "not a type I can read"
FILE_NO_ROOM = "no room left for it in what I read at once"
FILE_BAD_IMAGE = "not an image I can open"
FILE_BAD_PDF = "a PDF I cannot open"
FILE_LOCKED_PDF = "the PDF is password-protected"
FILE_TOO_MANY_IMAGES = "I look at {count} images per question at most"
FILE_IMAGES_OFF = "images are switched off (TEAMBOT_VISION=off)"
FILE_UNAVAILABLE = "the platform did not give me the file"
FILE_HOST_REFUSED = "it is not on the platform's own file host, so I did not fetch it"
FILE_HTTP_ERROR = "the file host answered HTTP {status}"
FILE_DOWNLOAD_FAILED = "the download failed"
SLACK_FILES_SCOPE = "Slack sent a login page instead of the file: the app needs the files:read scope (reinstall it)"
#: Beside an answer given without the question's images, the model having refused them.
VISION_UNSUPPORTED = "The model {model} cannot see images, so I answered without them."
VISION_OFF = "Images are switched off here (TEAMBOT_VISION=off), so I answered without them."
FILE_TOO_BIG_DOWNLOAD = "it is over the {limit} limit"

# Message actions (Slack message shortcuts, Discord message context-menu commands)
#: The question a click on "Ask teambot about this" / "Ask teambot" asks, the message itself given as context.
ACTION_ASK = (
    'Explain the message by {author} that starts "{excerpt}": what it says and means, and answer it if it asks '
    "something."
)
#: The question a click on "Summarize this thread" / "Summarize" asks, the thread (or channel) given as context.
ACTION_SUMMARIZE = (
    "Summarize the conversation above: the main points, what was decided, and what is still open, with who said "
    "what where it matters."
)
#: How much of the message the question quotes, so the model knows which one is meant.
ACTION_EXCERPT_LENGTH = 80
#: Heads a summary that could not read the whole thread within the budget.
ACTION_OLDEST_LEFT_OUT = "_(The thread is longer than I can read at once: I left out its oldest messages.)_"
#: Slack's names for the two message shortcuts (also in deploy/slack-manifest-*.yml).
SLACK_ACTION_ASK = "Ask teambot about this"
SLACK_ACTION_SUMMARIZE = "Summarize this thread"
#: Discord's names for the two message context-menu commands.
DISCORD_ACTION_ASK = "Ask teambot"
DISCORD_ACTION_SUMMARIZE = "Summarize"
#: The private note to the person who clicked, once the answer is posted in the channel.
ACTION_ANSWERED = "Answered under the message."
#: A message action on a message with nothing to read.
ACTION_NOTHING_TO_READ = "That message has no text I can read."

# Tool approvals (Slack and Discord buttons) and progress
APPROVAL_REQUEST = "To answer {asker}, I would like to run {tool} with these arguments:"
APPROVAL_FOOTER = "Only {asker} can approve or deny this. With no answer within {seconds} s it is denied."
APPROVAL_APPROVE = "Approve"
APPROVAL_DENY = "Deny"
APPROVAL_APPROVED = "Approved by {asker}."
APPROVAL_DENIED = "Denied by {asker}: not run."
APPROVAL_EXPIRED = "Not answered within {seconds} s, so denied: not run."
APPROVAL_STOPPED = "I had to stop (a restart) before this was answered, so it was not run."
APPROVAL_NOT_ASKER = "Only {asker} can approve or deny this request."
APPROVAL_UNKNOWN = (
    "This request expired (or I restarted since it was posted), so nothing was run. Ask me again if you still need it."
)
#: Ends the arguments shown in an approval request when they are too long to show whole.
APPROVAL_ARGUMENTS_CUT = "\n… ({count:,} more characters)"
