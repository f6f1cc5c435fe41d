"""Episodes per minute at concurrency 1, 2, 4, 8, 16 against an OpenAI-compatible server that
answers every request after a fixed delay: do our client and flows keep that many requests
in flight, so that a real server (vLLM) can batch them?

The delay server below is a load-test target, nothing more: it answers `<|DONE|>` to memory
prompts and an action to action prompts, after `--delay` seconds, from a thread per request,
in a process of its own (so it takes no interpreter time from the client).
Each level plays the tiny game through the flows' episode fan-out (`flows.common.run_episodes`
in a flow on Prefect's local API: the episode tasks, the openai client), on seeds of its own
so that nothing comes from the cache; archiving and reports (fixed costs) are left out.

    python benchmarks/bench_concurrency.py [--episodes 16] [--steps 3] [--delay 0.1]

Target: a speed-up of at least 0.8 x N at N = 16 over N = 1.
"""

from __future__ import annotations

import argparse
import sys
import subprocess
import tempfile
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' OpenAI stand-in

LEVELS = (1, 2, 4, 8, 16)


def serve_with_delay(port: int, delay: float) -> None:
    """An OpenAI-compatible chat endpoint that answers after `delay` seconds (load-test
    target). It runs in a process of its own, so its work never competes with the client's
    for the interpreter lock, and keeps connections alive (HTTP/1.1) as vLLM's server does."""

    from fake_openai import JSONHandler, chat_completion

    class Handler(JSONHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms delayed-ACK stall)

        def do_GET(self) -> None:  # noqa: N802 - /v1/models
            self.send_json({"object": "list", "data": [{"id": "delay", "object": "model", "root": "delay"}]})

        def do_POST(self) -> None:  # noqa: N802 - /v1/chat/completions
            body = self.read_json()
            time.sleep(delay)
            last = body["messages"][-1]["content"]
            reply = "<|ACTION|>look<|END|>" if "world action" in last or "No action found" in last else "<|DONE|>"
            self.send_json(chat_completion(body["model"], reply))

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def delay_server(delay: float) -> tuple[subprocess.Popen, str]:
    """Start `serve_with_delay` in a child process; (process, base URL) once it answers."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--delay", str(delay)])
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/models", timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the delay server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=16, help="episodes per level")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--delay", type=float, default=0.1, help="seconds per model request")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrency levels, e.g. 1,16")
    ap.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)  # the delay server's process
    args = ap.parse_args()
    if args.serve is not None:
        serve_with_delay(args.serve, args.delay)
        return
    levels = [int(n) for n in args.levels.split(",")]

    from agent_core.models.config import ModelConfig
    from agent_core.workspace import configure_prefect_env

    with tempfile.TemporaryDirectory() as tmp:
        configure_prefect_env(Path(tmp))
        from prefect import flow

        from agent_core.episode import EpisodeSpec
        from agent_core.scaffold import Scaffold
        from flows.common import RunParams, run_episodes

        server, url = delay_server(args.delay)
        models = ModelConfig(backend="openai", base_url=url, model="delay", constrain="off")
        scaffold = str(Scaffold.builtin("tiny").root)

        def specs(seeds: list[int], steps: int) -> list[EpisodeSpec]:
            return [EpisodeSpec(game="tiny", task="key-door", seed=s, max_steps=steps, scaffold_dir=scaffold,
                                models=models, workspace=tmp) for s in seeds]

        @flow(name="bench-concurrency", validate_parameters=False)
        def level(batch: list[EpisodeSpec], n: int) -> float:
            started = time.perf_counter()
            run_episodes(batch, RunParams(concurrency=n))
            return time.perf_counter() - started

        level(specs([10_000], 1), 1)  # Prefect's start-up off the clock
        rates = {}
        for i, n in enumerate(levels):
            seeds = list(range(i * args.episodes, (i + 1) * args.episodes))
            rates[n] = args.episodes / level(specs(seeds, args.steps), n) * 60
        server.terminate()
    calls = args.steps * 3  # LOG, PLAN, action per step
    print(f"\ntiny game, {args.episodes} episodes of {args.steps} steps (~{calls} requests each) per level, "
          f"server delay {args.delay:g} s per request\n")
    print(f"{'concurrency':>11} {'episodes/min':>13} {'speed-up':>9} {'target (0.8 x N)':>17}")
    first = rates[levels[0]]
    for n in levels:
        speedup = rates[n] / first
        print(f"{n:>11} {rates[n]:>13.1f} {speedup:>9.2f} {0.8 * n:>17.1f}")
    if levels[0] == 1 and 16 in rates:
        final = rates[16] / first
        print(f"\nat N = 16: {final:.1f}x (target >= {0.8 * 16:.1f}x) -> {'met' if final >= 12.8 else 'NOT met'}")


if __name__ == "__main__":
    main()
