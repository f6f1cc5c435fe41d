"""Shared by the environment tests: play a fixed action sequence and record every text."""


def play(env, seed: int, actions: list[str]) -> list[str]:
    """Observation, reward and done flag after every action, until the episode ends."""
    texts = [env.reset(seed).text]
    for a in actions:
        r = env.step(a)
        texts.append(f"{r.observation.text}|{r.reward}|{r.done}")
        if r.done:
            break
    return texts
