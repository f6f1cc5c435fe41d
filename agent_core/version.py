"""The behaviour version of episodes: part of every episode key.

An episode's cache key names everything that determines it (scaffold, models, game, seed,
budget, sampling). Code is part of that too: after a change to how the agent, the command
protocol, decoding or a game behaves, an episode cached under the old code must not be
gated against one played with the new code. So `PROTOCOL_VERSION` goes into every key and
is bumped whenever such a change lands.

`SOURCES` are the files whose changes can alter an episode, and `SOURCES_DIGEST` their
digest at the current version; `tests/agent_core/test_version.py` fails when they changed
without a bump, and prints the new digest to record here together with the bump.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PROTOCOL_VERSION = 3
SOURCES_DIGEST = "b5602dc749852570"

_ROOT = Path(__file__).resolve().parents[1]
#: sources (relative to the repository) that decide what happens in an episode
SOURCES = (
    "agent_core/agent.py",
    "agent_core/commands.py",
    "agent_core/conversation.py",
    "agent_core/episode.py",
    "agent_core/grammar.py",
    "agent_core/memory.py",
    "agent_core/scaffold.py",
    "agent_core/models/config.py",
    "agent_core/models/devices.py",
    "agent_core/models/local.py",
    "agent_core/models/openai_client.py",
    "agent_core/models/policies.py",
    "agent_core/models/scripted.py",
    "environments/base.py",
    "environments/crafter_env.py",
    "environments/minihack_env.py",
    "environments/nethack_env.py",
    "environments/nle_text.py",
    "environments/registry.py",
    "environments/tiny.py",
)


def sources_digest() -> str:
    """Digest of `SOURCES` as they are on disk (line endings normalised)."""
    h = hashlib.sha256()
    for rel in SOURCES:
        h.update(rel.encode() + b"\0" + (_ROOT / rel).read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return h.hexdigest()[:16]
