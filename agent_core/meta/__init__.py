"""The meta-LLM, used by both outer loops: the scaffold reviewer (`agent_core.review`, loop 1)
and the training curator (`agent_core.training`, loop 2).

- `config.py`: where the meta-LLM is and how it is asked (endpoint, mode, budget); the
  rule-based fallback when no endpoint is configured.
- `loop.py`: the tool-using agent loop with its budget, ledger and review trace.
- `tool_specs.py` / `tools.py`: the trace-store tools (SQL, traces, grep, memory replay, the
  agent's code), as the model sees them and as they run.
- `prompts.py` (and `prompts/`): prompt rendering and what both loops' prompts share.

Each loop adds its own submission tool and prompts on top (`review/agentic.py`,
`training/agentic.py`); neither loop imports the other.
"""
