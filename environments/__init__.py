"""Text-game environments: Tiny, Crafter, NetHack and MiniHack behind one protocol."""

from .base import EnvError, Environment, Observation, StepResult
from .registry import GAMES, env_options, list_games, make_env

__all__ = ["EnvError", "Environment", "GAMES", "Observation", "StepResult", "env_options", "list_games", "make_env"]
