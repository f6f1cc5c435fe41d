"""What the curators read about earlier training trials (a trial is the dict the training
loop records: its examples, losses, the specialist's verdict, or why it was rejected)."""

from __future__ import annotations


def held_out_loss(trial: dict) -> float | None:
    """The trial's loss on held-out episodes (`dataset.split_held_out`), the loss trials are
    compared by: the training loss rewards memorising the pool. None when the pool had one
    episode (nothing could be held out)."""
    value = trial.get("eval_loss")
    return None if value is None else float(value)


def describe_trial(trial: dict) -> str:
    """One line a curator reads about an earlier trial."""
    if trial.get("error"):
        return f"rejected: {trial['error']}"
    held = held_out_loss(trial)
    loss = (f"held-out loss {held:.3f} on {trial.get('eval_examples', '?')} examples of unseen episodes"
            if held is not None else "no held-out loss (a single pool episode)")
    parts = [f"{trial.get('examples', '?')} examples, {loss}, final training loss "
             f"{trial.get('final_loss', float('nan')):.3f}"]
    if "verdict" in trial:
        v = trial["verdict"]
        parts.append(f"specialist progression {v['mean_candidate']:.3f} vs base {v['mean_incumbent']:.3f} "
                     f"({'promoted' if v['promote'] else 'not promoted'}: {v['reason']})")
    if "diagnostics" in trial:
        parts.append(f"write/search specialist {trial['diagnostics'].get('specialist')} vs base "
                     f"{trial['diagnostics'].get('base')}")
    return "; ".join(parts)


def best_by_held_out(trials: list[dict]) -> dict | None:
    """The trained trial with the lowest held-out loss (None: no trial has one)."""
    scored = [t for t in trials if not t.get("error") and held_out_loss(t) is not None]
    return min(scored, key=lambda t: (held_out_loss(t), t.get("trial", 0)), default=None)
