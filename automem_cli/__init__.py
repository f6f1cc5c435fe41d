"""The `automem` command line: the one place that ties agent_core to the Prefect flows
(agent_core itself imports neither `flows` nor `prefect`)."""
