"""The conversation window: exactly which messages each call sees."""

import pytest

from agent_core.conversation import Conversation, rebuild_contexts
from agent_core.models.scripted import ScriptedModel
from agent_core.records import SamplingParams

P = SamplingParams()


def _texts(messages):
    return [(m.role, m.content) for m in messages]


def _two_steps(window: int):
    """Step 0: LOG call, then feedback nobody answered (the step ended); step 1: LOG call."""
    model = ScriptedModel(["r0", "r1", "r2"])
    conv = Conversation("SYS", window, demonstrations=[("demo q", "demo a")])
    conv.begin_step()
    conv.add_user("obs 0")
    first = conv.call(model, P, "log", "memory")
    conv.add_user("feedback 0")  # e.g. operation results after the last call of the step
    conv.begin_step()
    conv.add_user("obs 1")
    conv.add_user("log prompt 1")  # the same step: merged
    second = conv.call(model, P, "log", "memory")
    return model, conv, [first, second]


def test_history_window_zero_means_no_earlier_steps_but_always_this_steps_observation():
    model, _, calls = _two_steps(window=0)
    assert _texts(model.calls[1]) == [("system", "SYS"), ("user", "demo q"), ("assistant", "demo a"),
                                      ("user", "obs 1\n\nlog prompt 1")]
    assert _texts(model.calls[0]) == [("system", "SYS"), ("user", "demo q"), ("assistant", "demo a"),
                                      ("user", "obs 0")]
    assert [_texts(c) for c in rebuild_contexts(calls)] == [_texts(c) for c in model.calls]


def test_window_one_keeps_the_previous_step_with_its_unanswered_feedback_apart():
    model, _, calls = _two_steps(window=1)
    assert _texts(model.calls[1]) == [
        ("system", "SYS"), ("user", "demo q"), ("assistant", "demo a"),
        ("user", "obs 0"), ("assistant", "r0"), ("user", "feedback 0"),
        ("user", "obs 1\n\nlog prompt 1")]
    assert [_texts(c) for c in rebuild_contexts(calls)] == [_texts(c) for c in model.calls]


@pytest.mark.parametrize("window", [0, 1, 3])
def test_every_call_sees_its_own_steps_observation(window):
    model = ScriptedModel(lambda m: "ok")
    conv = Conversation("SYS", window)
    for step in range(5):
        conv.begin_step()
        conv.add_user(f"observation {step}")
        conv.call(model, P, "log", "memory")
        conv.add_user(f"results {step}")
        conv.add_user("plan prompt")
        conv.call(model, P, "plan", "memory")
        conv.add_user(f"late feedback {step}")
    for i, seen in enumerate(model.calls):
        step = i // 2
        contents = [m.content for m in seen]
        assert any(f"observation {step}" in c for c in contents)
        earlier = {s for s in range(step) if any(f"observation {s}" in c for c in contents)}
        assert earlier == set(range(max(0, step - window), step))


@pytest.mark.parametrize(("window", "stride"), [(2, 2), (2, 3), (0, 2), (1, 1)])
def test_a_stride_drops_whole_strides_so_the_context_start_holds_in_between(window, stride):
    model = ScriptedModel(lambda m: "ok")
    conv = Conversation("SYS", window, history_stride=stride)
    starts = []
    for step in range(9):
        conv.begin_step()
        conv.add_user(f"observation {step}")
        conv.call(model, P, "log", "memory")
        contents = [m.content for m in model.calls[-1]]
        earlier = [s for s in range(step) if f"observation {s}" in contents]
        over = max(0, step - window)
        assert earlier == list(range(over - over % stride, step))  # window .. window+stride-1 kept
        assert min(step, window) <= len(earlier) <= window + stride - 1
        starts.append(earlier[0] if earlier else step)
    # the context's first step moves only once per stride: in between, a prefix cache holds
    moves = sum(a != b for a, b in zip(starts, starts[1:]))
    assert moves <= -(-(9 - window) // stride)


def test_invalid_window_or_stride_is_refused_with_the_valid_range():
    with pytest.raises(ValueError, match="history_stride >= 1"):
        Conversation("SYS", 2, history_stride=0)
    with pytest.raises(ValueError, match="history_window must be >= 0"):
        Conversation("SYS", -1)


class _SeedRecorder:
    """A model that records the seed and temperature each call was sent with."""

    model_id = "rec"

    def __init__(self):
        self.sent = []

    def complete(self, messages, params, constraint=None):
        from agent_core.records import Completion

        self.sent.append((params.seed, params.temperature))
        return Completion(text="<|DONE|>")


def test_each_call_is_seeded_from_the_episode_seed_step_and_call():
    from agent_core.conversation import call_seed

    def seeds(episode_seed, scaffold_seed=None):
        model, conv = _SeedRecorder(), Conversation("SYS", 2, seed=episode_seed)
        params = SamplingParams(temperature=0.7, seed=scaffold_seed)
        for step in range(3):
            conv.begin_step(step)
            conv.add_user(f"obs {step}")
            conv.call(model, params, "log", "memory")
            conv.call(model, params, "plan", "memory")
        return [s for s, _ in model.sent]

    a = seeds(0)
    assert a == seeds(0)                       # reproducible (no process-dependent hashing)
    assert len(set(a)) == 6                    # every call of every step its own
    assert set(a).isdisjoint(seeds(1))         # another episode seed, other draws
    assert seeds(0, scaffold_seed=5) != a      # the scaffold's own seed is mixed in
    assert a[3] == call_seed(0, 1, 1) and all(0 <= s < 2 ** 31 for s in a)
