"""Prefect flows: one per outer-loop stage, plus the nightly iteration."""

from agent_core.workspace import configure_prefect_env

configure_prefect_env()
