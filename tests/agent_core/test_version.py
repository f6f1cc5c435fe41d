"""Episode keys carry everything that decides an episode, code included."""

from agent_core.episode import episode_key
from agent_core.models.config import ModelConfig
from agent_core.version import PROTOCOL_VERSION, SOURCES_DIGEST, sources_digest


def test_a_change_to_agent_or_game_code_comes_with_a_version_bump():
    digest = sources_digest()
    assert digest == SOURCES_DIGEST, (
        "the sources that decide episodes changed (agent_core.version.SOURCES): if behaviour may "
        f"have changed, bump PROTOCOL_VERSION (now {PROTOCOL_VERSION}) so cached episodes of the old "
        f"code are never mixed with new ones; either way set SOURCES_DIGEST = {digest!r}")


def test_keys_change_with_the_endpoint_the_device_the_dtype_and_environment_options():
    args = ("scaffold", "m", "m", "minihack", "Boxoban-Hard", 0, 10, {"max_tokens": 8})
    a = ModelConfig(backend="openai", base_url="http://gpu-a:8000/v1", model="m").identity()
    b = ModelConfig(backend="openai", base_url="http://gpu-b:8000", model="m").identity()
    assert a == {"endpoint": "http://gpu-a:8000/v1"} and a != b
    assert episode_key(*args, a) != episode_key(*args, b)
    assert ModelConfig(backend="local", device="cpu").identity() == {"device": "cpu", "dtype": "bfloat16"}
    assert episode_key(*args, a, {"boxoban_levels": "/levels/one"}) != episode_key(*args, a, {"boxoban_levels": "/levels/two"})
    assert episode_key(*args, a) == episode_key(*args, a, {})  # deterministic
