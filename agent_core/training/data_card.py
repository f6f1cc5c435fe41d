"""A training set's data card: what it holds and where every example came from, as JSON
(`data_card.json`, every example's provenance) and as markdown (`data_card.md`, read in the
Prefect UI). `dataset.build_dataset` writes both beside `train.jsonl`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from agent_core.diagnostics import MemoryChain
from agent_core.training.program import CurationProgram


def length_stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    return {"min": v[0], "p50": v[len(v) // 2], "mean": round(sum(v) / len(v), 1), "max": v[-1],
            "total": sum(v)}


def data_card(program: CurationProgram, examples: list[dict[str, Any]], chains: list[list[MemoryChain]],
              stats: Counter, digest: str, tokenizer: Any | None, routines: tuple[str, ...],
              held_out: list[str]) -> dict[str, Any]:
    """The card of `examples` (selected by `program`, `stats` counting what the filters
    dropped); `held_out`: the episodes the held-out loss is measured on."""
    per_routine = Counter(e["meta"]["routine"] for e in examples)
    per_game = Counter(e["meta"]["game"] for e in examples)
    card: dict[str, Any] = {
        "digest": digest,
        "examples": len(examples),
        "per_routine": {r: per_routine.get(r, 0) for r in routines},
        "per_game": dict(sorted(per_game.items())),
        "per_game_routine": {f"{g}/{r}": n for (g, r), n in sorted(
            Counter((e["meta"]["game"], e["meta"]["routine"]) for e in examples).items())},
        "episodes": len({e["meta"]["episode_id"] for e in examples}),
        # the held-out loss is measured on these whole episodes (`split_held_out`)
        "held_out_episodes": held_out,
        "filters": dict(sorted(stats.items())),
        "target_chars": length_stats([len(e["target"]) for e in examples]),
        "context_chars": length_stats([sum(len(m["content"]) for m in e["messages"]) for e in examples]),
        "context_messages": length_stats([len(e["messages"]) for e in examples]),
        "query": program.selection_sql,
        "program": program.model_dump(mode="json"),
        # where every example comes from, in train.jsonl's order: [episode_id, step, call_id, routine]
        "provenance": [[e["meta"]["episode_id"], e["meta"]["step"], e["meta"]["call_id"], e["meta"]["routine"]]
                       for e in examples],
        # per example (same order), the credited write -> look-up -> decision chains its call is a link of
        "chains": [[c.model_dump() for c in cs] for cs in chains],
    }
    if tokenizer is not None:
        def ntok(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        card["tokenizer"] = getattr(tokenizer, "name_or_path", "") and Path(tokenizer.name_or_path).name
        card["target_tokens"] = length_stats([ntok(e["target"]) for e in examples])
        card["context_tokens"] = length_stats([ntok(tokenizer.apply_chat_template(
            e["messages"], add_generation_prompt=True, tokenize=False)) for e in examples])
    return card


#: examples listed in the markdown card (the JSON card lists them all)
PROVENANCE_ROWS = 200


def chain_text(chains: list[dict[str, Any]], most: int = 3) -> str:
    text = "; ".join(f"write step {c['write_step']} -> look-up step {c['lookup_step']} -> "
                     f"{c['decision_call_id']} -> +{c['gain']:g}" for c in chains[:most])
    return (text + (f"; {len(chains) - most} more" if len(chains) > most else "")) or "-"


def data_card_markdown(card: dict[str, Any]) -> str:
    def table(title: str, d: dict[str, Any]) -> list[str]:
        return [f"### {title}", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in d.items()], ""]

    lines = [f"# Memory-specialist dataset {card['digest']}", "",
             f"{card['examples']} examples from {card['episodes']} episodes. Targets are verbatim "
             "memory-role replies (ACTION commands cut out of PLAN replies); contexts are exactly "
             "what the model saw.", ""]
    lines += table("Examples per routine", card["per_routine"])
    lines += table("Examples per game", card["per_game"])
    lines += table("Selection and filters", card["filters"])
    for key in ("target_chars", "context_chars", "target_tokens", "context_tokens"):
        if card.get(key):
            lines += table(key.replace("_", " ").capitalize(), card[key])
    shown = card.get("provenance", [])[:PROVENANCE_ROWS]
    chains = card.get("chains", [])
    lines += ["### Provenance", "", "Every example's episode, step and model call (train.jsonl's order"
              + (f"; the first {len(shown)} of {card['examples']}, all in data_card.json" if len(shown) < card["examples"]
                 else "") + "), and the credited chains it is a link of (write step -> look-up step -> "
              "the call that decided -> progression gained; '-': selected by another signal).", "",
              "| episode | step | call | routine | chains |", "|---|---|---|---|---|",
              *[f"| {e} | {s} | {c} | {r} | {chain_text(chains[i] if i < len(chains) else [])} |"
                for i, (e, s, c, r) in enumerate(shown)], ""]
    lines += ["### Selection query", "", "```sql", card["query"], "```", "",
              "### Program", "", "The program that first built this dataset (its LoRA settings do not "
              "affect the data; a program with other LoRA settings reuses the folder).", "",
              "```json", json.dumps(card["program"], indent=2), "```", ""]
    return "\n".join(lines)
