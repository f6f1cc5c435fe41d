"""Thin Prefect tasks over `agent_core`: each calls the core and returns paths or small records."""

from agent_core.workspace import configure_prefect_env

configure_prefect_env()
