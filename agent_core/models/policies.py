"""Rule-based agents whose play depends on their memory: baselines that implement the
`ChatModel` protocol, so the outer loops can be shown to improve something real without a
GPU (the 135M local model plays too weakly for a scaffold to change its score).

`tiny_explorer` plays the tiny key-and-door game. It keeps a keyed line `key: <room>` when
it sees the key, but it only trusts what its memory confirms: it takes the key when a
look-up in the same step showed that line for the room it stands in. By habit it never
looks anything up. So under a scaffold without `consult_before_write` it never takes the
key; once a scaffold refuses a write until a look-up, it learns from that correction and
searches first, the search shows the line, and it takes the key (then opens the door when
it sees it).
"""

from __future__ import annotations

import re

from agent_core.records import Message

_ROOM = re.compile(r"You are in the (\w+)\.")
_EXITS = re.compile(r"Exits: ([a-z, ]+)\.")
_DOOR = re.compile(r"There is (a locked|an open) door to the (\w+)\.")


def _step_messages(messages: list[Message]) -> tuple[str, str]:
    """(this step's observation prompt, everything the model was shown after it)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user" and "LOG routine" in messages[i].content:
            rest = "\n".join(m.content for m in messages[i + 1:] if m.role == "user")
            return messages[i].content, rest
    return "", ""


def tiny_explorer(messages: list[Message]) -> str:
    """The reply of the tiny-game explorer to the latest prompt."""
    prompt = messages[-1].content if messages else ""
    observation, since = _step_messages(messages)
    room = (_ROOM.search(observation) or [None, "nowhere"])[1]
    key_here = "A key lies on the floor." in observation
    note = f"<|UPSERT|>map.md|key|{room}<|END|>" if key_here else f"<|UPSERT|>map.md|{room}|visited<|END|>"
    if "World action" in prompt or "world action" in prompt or "No action found" in prompt:
        return f"<|ACTION|>{_act(observation, since, room, key_here)}<|END|>"
    if "LOG routine" in prompt:
        # corrected once (a write refused until a look-up), it looks up first from then on
        told = any("refused: SEARCH or READ" in m.content for m in messages if m.role == "user")
        return ("<|SEARCH|>key<|END|>" if told else "") + note + "<|DONE|>"
    return "<|DONE|>"  # PLAN, operation results: nothing to look up by habit


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
    step = int((re.search(r"Step (\d+)\.", observation) or [None, "0"])[1])
    return f"go {onward[(step // 2) % len(onward)]}"
