"""The held-out split is by episode: no episode has examples on both sides."""

from __future__ import annotations

import json
import random

from agent_core.training.dataset import build_dataset, load_examples, split_held_out
from agent_core.training.program import Composition, CurationProgram, LoraSettings, RoutineMix


def _examples(episodes: dict[str, int]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{e} step {i}"}], "target": "<|DONE|>",
             "meta": {"episode_id": e, "call_id": f"{e}:{i}"}}
            for e, n in episodes.items() for i in range(n)]


def test_whole_episodes_are_held_out_and_the_split_ignores_order():
    examples = _examples({f"ep{k}": 3 + k % 4 for k in range(20)})
    train, held = split_held_out(examples)
    assert sorted(train + held) == list(range(len(examples))) and held
    held_eps = {examples[i]["meta"]["episode_id"] for i in held}
    train_eps = {examples[i]["meta"]["episode_id"] for i in train}
    assert not held_eps & train_eps and len(held_eps) == 2  # one episode in ten, whole
    shuffled = examples[:]
    random.Random(1).shuffle(shuffled)
    _, again = split_held_out(shuffled)
    assert {shuffled[i]["meta"]["episode_id"] for i in again} == held_eps


def test_one_episode_has_no_held_out_loss_and_two_hold_one_out():
    assert split_held_out(_examples({"only": 9})) == (list(range(9)), [])
    train, held = split_held_out(_examples({"a": 4, "b": 2}))
    assert len({i // 4 if i < 4 else 1 for i in held}) == 1 and train  # one episode out, one in
    assert held in ([0, 1, 2, 3], [4, 5])


def test_the_dataset_card_names_the_held_out_episodes(archive, tmp_path):
    program = CurationProgram(
        selection_sql="select call_id from calls",
        composition=Composition(routine_mix=RoutineMix(log=0.5, plan=0.5), max_per_episode=100,
                                min_examples=1, max_examples=1000, top_episode_share=1.0),
        lora=LoraSettings(rank=4, alpha=8, target_modules=["q_proj"], learning_rate=1e-3, max_seq_len=512))
    info = build_dataset(archive.root, program, tmp_path)
    examples = load_examples(info.path)
    _, held = split_held_out(examples)
    card = json.loads((info.path / "data_card.json").read_text())
    assert card["held_out_episodes"] == sorted({examples[i]["meta"]["episode_id"] for i in held})
    assert len(card["held_out_episodes"]) == 1 and card["episodes"] == 6  # 6 episodes: round(0.6) -> 1


def test_the_samples_of_one_game_seed_are_held_out_together():
    # samples_per_seed: two episodes per seed start from the same observation
    examples = [{"messages": [{"role": "user", "content": f"{e} step {i}"}], "target": "<|DONE|>",
                 "meta": {"episode_id": e, "call_id": f"{e}:{i}", "game": "tiny", "task": "recall", "seed": seed}}
                for seed in range(10) for e in (f"s{seed}a", f"s{seed}b") for i in range(3)]
    train, held = split_held_out(examples)
    held_seeds = {examples[i]["meta"]["seed"] for i in held}
    assert len(held_seeds) == 1 and len(held) == 6  # one seed in ten: both its episodes
    assert not held_seeds & {examples[i]["meta"]["seed"] for i in train}
