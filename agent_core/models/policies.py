"""Rule-based agents whose play depends on their memory: baselines that implement the
`ChatModel` protocol (through `ScriptedModel`), so the outer loops can be shown to improve
something real without a GPU (the 135M local model plays too weakly for a scaffold to
change its score).

Both decide only from the messages they are shown, never from the game's state. They play
the command protocol as the agent runs it: a reply is writes then one ending; a group of
look-ups ends the reply, and its results come back in the next message, where the policy
reads them. Where a policy would act otherwise under another scaffold, it offers replies in
order of preference; under the grammar of the call `ScriptedModel` answers with the first
the grammar allows, as constrained decoding would. The routine being asked for is read
from the scaffold prompts' own cues ("LOG routine", "PLAN routine", "Commit one world
action"); no policy reads the agent's feedback (what it refused, what may come next).

`tiny_explorer` plays `tiny/key-door`. It keeps a keyed line `key: <room>` when it sees the
key, but it only trusts what its memory confirms: it takes the key when a look-up in the same
step showed that line for the room it stands in. By choice it never looks anything up, so
under the v0 scaffold it never takes the key. Under a scaffold with `consult_before_write`
the grammar of a LOG turn holds only look-ups until one has run, so its own first choice
(write, then DONE) is not allowed: it looks up (its second choice), sees the line in the
next turn once written, and takes the key (then opens the door when it sees it). In free
text (`constrain` off) the agent refuses its write instead, and nothing makes it look up.

`tiny_recall` plays `tiny/recall`. It writes down which door leads out when it is told, and
at the doors looks it up (a SEARCH that ends its PLAN reply), then opens the door the result
names. What it cannot see (not in its memory's results, not in the observations still in its
window) it guesses: the first door listed.
"""

from __future__ import annotations

import re
from typing import Literal

from agent_core.records import Message

_ROOM = re.compile(r"You are in the (\w+)\.")
_EXITS = re.compile(r"Exits: ([a-z, ]+)\.")
_DOOR = re.compile(r"There is (a locked|an open) door to the (\w+)\.")
_STEP_PROMPT = re.compile(r"^Step (\d+)\.")  # how every scaffold's observation prompt starts
#: the scaffold prompts' cues (log.jinja, plan.jinja, act.jinja), by the routine they ask for
_CUES = (("LOG routine", "log"), ("PLAN routine", "plan"), ("Commit one world action", "act"))

Asked = Literal["log", "plan", "act"]


def asked_for(messages: list[Message]) -> Asked | None:
    """The routine being asked for: the latest scaffold cue shown (a routine goes on after its
    look-ups' results, which carry no cue). None: no cue at all."""
    for m in reversed(messages):
        if m.role != "user":
            continue
        found = [(m.content.rfind(cue), routine) for cue, routine in _CUES if cue in m.content]
        if found:
            return max(found)[1]  # type: ignore[return-value]
    return None


def step_messages(messages: list[Message]) -> tuple[str, str]:
    """(this step's observation prompt, the user texts shown after it in this step)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user" and _STEP_PROMPT.match(messages[i].content):
            rest = "\n".join(m.content for m in messages[i + 1:] if m.role == "user")
            return messages[i].content, rest
    return "", ""


def own_replies(messages: list[Message]) -> list[str]:
    """The model's own replies in this step (after its observation prompt)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user" and _STEP_PROMPT.match(messages[i].content):
            return [m.content for m in messages[i + 1:] if m.role == "assistant"]
    return []


# -- tiny/key-door ---------------------------------------------------------------

def tiny_explorer(messages: list[Message]) -> list[str]:
    """The tiny key-door explorer's replies to the latest prompt, in order of preference."""
    observation, since = step_messages(messages)
    asked = asked_for(messages)
    room = (_ROOM.search(observation) or [None, "nowhere"])[1]
    key_here = "A key lies on the floor." in observation
    if asked == "act":
        return [f"<|ACTION|>{_act(observation, since, room, key_here)}<|END|>"]
    if asked == "log":
        note = f"<|UPSERT|>map.md|key|{room}<|END|>" if key_here else f"<|UPSERT|>map.md|{room}|visited<|END|>"
        # its own choice: write, then DONE; where a look-up must come first, it looks up
        return [note + "<|DONE|>", "<|SEARCH|>key<|END|>", "<|DONE|>"]
    return ["<|DONE|>"]  # PLAN: nothing to look up by choice


def _act(observation: str, since: str, room: str, key_here: bool) -> str:
    door = _DOOR.search(observation)
    carrying = "You carry: a key." in observation
    if door and carrying:
        return "open door" if door[1] == "a locked" else f"go {door[2]}"
    if key_here:
        # trust memory only: take the key when this step's look-up confirmed it is here
        confirmed = re.search(rf"^map\.md:\d+: key: {re.escape(room)}$", since, re.MULTILINE)
        return "take key" if confirmed else "look"
    exits = (_EXITS.search(observation) or [None, ""])[1].replace(" ", "").split(",")
    exits = [e for e in exits if e]
    if not exits:
        return "wait"
    # walk the house like a depth-first search: never straight back unless at a dead end
    last = (re.search(r"Your last action: go (\w+)", observation) or [None, ""])[1]
    back = {"north": "south", "south": "north", "east": "west", "west": "east"}.get(last)
    onward = [e for e in exits if e != back] or exits
    step = int((_STEP_PROMPT.match(observation) or [None, "0"])[1])
    return f"go {onward[(step // 2) % len(onward)]}"


# -- tiny/recall -------------------------------------------------------------------

_COLOUR = r"(red|green|blue|yellow)"
#: the fact as the game says it, and as this policy writes it (a search hit `file:n: way out: red door`)
_TOLD = re.compile(rf"The way out is the {_COLOUR} door")
_NOTED = re.compile(rf"^[\w.\-]+:\d+: way out: {_COLOUR} door$", re.MULTILINE)
_DOORS = re.compile(r"Four doors stand before you: (\w+)")
RECALL_QUERY = "way out"


def tiny_recall(messages: list[Message]) -> list[str]:
    """The tiny/recall player's replies to the latest prompt, in order of preference."""
    observation, _ = step_messages(messages)
    asked = asked_for(messages)
    told = _TOLD.search(observation)
    at_doors = _DOORS.search(observation)
    looked_up = any(f"<|SEARCH|>{RECALL_QUERY}<|END|>" in r for r in own_replies(messages))  # this step
    if asked == "log":
        if told:  # write it down, as a keyed line (or appended where keyed lines are not allowed)
            line = f"{RECALL_QUERY}|{told[1]} door"
            return [f"<|UPSERT|>progress.md|{line}<|END|><|DONE|>",
                    f"<|APPEND|>progress.md|{RECALL_QUERY}: {told[1]} door<|END|><|DONE|>",
                    "<|DONE|>", f"<|SEARCH|>{RECALL_QUERY}<|END|>"]
        return ["<|DONE|>", f"<|SEARCH|>{RECALL_QUERY}<|END|>"]
    if asked == "plan":
        if at_doors and not looked_up:  # the look-up ends the reply; the result comes back next
            return [f"<|SEARCH|>{RECALL_QUERY}<|END|>", "<|DONE|>"]
        return ["<|DONE|>"]
    if asked == "act":
        if not at_doors:
            return ["<|ACTION|>go forward<|END|>"]
        return [f"<|ACTION|>open {_recalled(messages) or at_doors[1]} door<|END|>"]
    return ["<|DONE|>"]


def _recalled(messages: list[Message]) -> str | None:
    """The way out as the messages shown say it (a look-up's result, or the game's own words
    still in the window), the latest first; None when nothing shown says it."""
    for m in reversed(messages):
        if m.role != "user":
            continue
        said = [*_NOTED.finditer(m.content), *_TOLD.finditer(m.content)]
        if said:
            return max(said, key=lambda s: s.start())[1]
    return None
