"""Scaffold hooks run confined: RestrictedPython at compile time, vetted module proxies, a
worker process with limits. The escape corpus must give 0 escapes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent_core.agent import Roles
from agent_core.episode import run_episode
from agent_core.hooks import (HookCodeError, HookError, HookLimits, HookRunner, HookTimeout, check_source,
                              live_workers, network_isolated)
from agent_core.models.config import RoutineScript
from agent_core.models.scripted import ScriptedModel
from agent_core.records import StepRecord
from agent_core.scaffold import Scaffold
from environments import make_env

#: short limits so that loops and allocations are cut quickly
FAST = HookLimits(call_timeout_s=1.5, cpu_s=1, memory_mb=256)
SAMPLE_ARGS = {"postprocess_observation": ("You see a key.",),
               "validate_write": ("append", {"file": "map.md", "text": "key"}, {"map.md": ""})}


@pytest.fixture(autouse=True)
def no_worker_leaks():
    """Every test stops the workers it started: none is left running."""
    before = live_workers()
    yield
    leaked = live_workers() - before
    assert not leaked, f"hook workers left running: {leaked}"
    for pid in leaked:
        assert not Path(f"/proc/{pid}").exists()


def hook(body: str, header: str = "", name: str = "postprocess_observation") -> str:
    """A hooks.py whose hook `name` runs `body` (indented) and then returns 'ok'."""
    params = ", ".join(("observation",) if name == "postprocess_observation" else ("op", "args", "files"))
    lines = "\n".join("    " + line for line in body.strip("\n").splitlines())
    return f"{header}\ndef {name}({params}):\n{lines}\n    return 'ok'\n"


# Each attempt tries to reach os/sys/files/processes/introspection; reaching it would write
# the sentinel file {S} or return 'ESCAPED'.
ESCAPES: dict[str, str] = {
    # the two bypasses of the old AST checker, with and without leading underscores
    "alias_underscore": hook("_t = typing\n_t.sys.modules['os'].system('touch {S}')\nreturn 'ESCAPED'", "import typing"),
    "alias": hook("t = typing\nt.sys.modules['os'].system('touch {S}')\nreturn 'ESCAPED'", "import typing"),
    "default_arg_underscore": "import typing\ndef postprocess_observation(observation, _m=typing):\n"
                              "    _m.sys.modules['os'].system('touch {S}')\n    return 'ESCAPED'\n",
    "default_arg": "import typing\ndef postprocess_observation(observation, m=typing):\n"
                   "    m.sys.modules['os'].system('touch {S}')\n    return 'ESCAPED'\n",
    "module_constant": "import typing\nT = typing\ndef postprocess_observation(observation):\n"
                       "    T.sys.modules['os'].system('touch {S}')\n    return 'ESCAPED'\n",
    "dict_holder": hook("d = {'m': typing}\nd['m'].sys.modules['os'].system('touch {S}')\nreturn 'ESCAPED'",
                        "import typing"),
    "import_as": hook("t.sys.modules['os'].system('touch {S}')\nreturn 'ESCAPED'", "import typing as t"),
    "from_import_module": hook("sys.modules['os'].system('touch {S}')\nreturn 'ESCAPED'", "from typing import sys"),
    "textwrap_re": hook("textwrap.re.sys.modules['os'].system('touch {S}')\nreturn 'ESCAPED'", "import textwrap"),
    "collections_abc_sys": hook("collections.abc.sys.modules['os']\nreturn 'ESCAPED'", "import collections"),
    "from_collections_abc": hook("abc.sys\nreturn 'ESCAPED'", "from collections import abc"),
    "json_decoder_module": hook("json.decoder.scanstring\nreturn 'ESCAPED'", "import json"),
    "re_private": hook("re._compiler\nreturn 'ESCAPED'", "import re"),
    "math_loader": hook("getattr(math, 'loader', None) or getattr(math, '__loader__')\nreturn 'ESCAPED'", "import math"),
    "getattr_module": hook("getattr(typing, 'sys').modules['os'].system('touch {S}')\nreturn 'ESCAPED'", "import typing"),
    "get_type_hints": "import typing\ndef postprocess_observation(observation: 'print(1)'):\n"
                      "    typing.get_type_hints(postprocess_observation)\n    return 'ESCAPED'\n",
    "string_formatter": hook("string.Formatter().vformat('{0.__class__}', ((),), {})\nreturn 'ESCAPED'", "import string"),
    "namedtuple": hook("collections.namedtuple('A', 'x')\nreturn 'ESCAPED'", "import collections"),
    # imports
    "import_os": hook("os.system('touch {S}')\nreturn 'ESCAPED'", "import os"),
    "import_subprocess": hook("subprocess.run(['touch', '{S}'])\nreturn 'ESCAPED'", "import subprocess"),
    "from_os": hook("system('touch {S}')\nreturn 'ESCAPED'", "from os import system"),
    "import_sys": hook("sys.modules\nreturn 'ESCAPED'", "import sys"),
    "import_builtins": hook("builtins.open('{S}', 'w')\nreturn 'ESCAPED'", "import builtins"),
    "import_importlib": hook("importlib.import_module('os')\nreturn 'ESCAPED'", "import importlib"),
    "import_ctypes": hook("ctypes.CDLL(None)\nreturn 'ESCAPED'", "import ctypes"),
    "import_socket": hook("socket.create_connection(('127.0.0.1', 1))\nreturn 'ESCAPED'", "import socket"),
    "import_in_function": hook("import os\nos.system('touch {S}')\nreturn 'ESCAPED'"),
    "dunder_import": hook("__import__('os').system('touch {S}')\nreturn 'ESCAPED'"),
    "relative_import": hook("x\nreturn 'ESCAPED'", "from . import x"),
    # builtins that reach code, files or namespaces
    "open_write": hook("open('{S}', 'w').write('x')\nreturn 'ESCAPED'"),
    "open_workspace": hook("open('../hooks.py', 'w').write('x')\nreturn 'ESCAPED'"),
    "exec": hook("exec(\"open('{S}', 'w')\")\nreturn 'ESCAPED'"),
    "eval": hook("eval('1')\nreturn 'ESCAPED'"),
    "compile": hook("compile('1', 'f', 'eval')\nreturn 'ESCAPED'"),
    "globals": hook("globals()\nreturn 'ESCAPED'"),
    "vars": hook("vars()\nreturn 'ESCAPED'"),
    "type_builtin": hook("type(())\nreturn 'ESCAPED'"),
    "builtins_dict": hook("__builtins__['open']('{S}', 'w')\nreturn 'ESCAPED'"),
    "class_statement": hook("return 'ok'", "class A:\n    pass"),
    "setattr_module": hook("setattr(typing, 'x', 1)\nreturn 'ESCAPED'", "import typing"),
    "assign_module_attr": hook("re.compile = None\nreturn 'ESCAPED'", "import re"),
    # subclass walks and dunders, literal and built at run time
    "subclasses": hook("().__class__.__base__.__subclasses__()\nreturn 'ESCAPED'"),
    "getattr_dunder": hook("getattr((), '__class__')\nreturn 'ESCAPED'"),
    "getattr_built_string": hook("n = '__cl' + 'ass__'\ngetattr(getattr((), n), '__ba' + 'se__')\nreturn 'ESCAPED'"),
    "getattr_join": hook("getattr(observation, ''.join(['_', '_', 'class', '_', '_']))\nreturn 'ESCAPED'"),
    "mro_object": hook("o = str.mro()[-1]\ngetattr(o, '__subclasses__')()\nreturn 'ESCAPED'"),
    "function_globals": hook("postprocess_observation.__globals__\nreturn 'ESCAPED'"),
    "getattr_function_globals": hook("getattr(postprocess_observation, '__globals__')\nreturn 'ESCAPED'"),
    "lambda_code": hook("getattr(lambda: 0, '__code__')\nreturn 'ESCAPED'"),
    "builtin_self": hook("getattr(len, '__self__')\nreturn 'ESCAPED'"),
    "fstring_dunder": hook("f'{observation.__class__}'\nreturn 'ESCAPED'"),
    "percent_dunder": hook("'%s' % observation.__class__\nreturn 'ESCAPED'"),
    # format strings that walk attributes
    "str_format": hook("'{0.__class__.__base__}'.format(())\nreturn 'ESCAPED'"),
    "str_format_getattr": hook("getattr('{0.__class__}', 'format')(())\nreturn 'ESCAPED'"),
    "str_format_map": hook("'{x.__class__}'.format_map({'x': ()})\nreturn 'ESCAPED'"),
    "str_type_format": hook("str.format('{0.__class__}', ())\nreturn 'ESCAPED'"),
    "partial_getattr": hook("functools.partial(getattr, (), '__class__')()\nreturn 'ESCAPED'", "import functools"),
    "map_getattr": hook("list(map(getattr, [()], ['__class__']))\nreturn 'ESCAPED'"),
    # frames and tracebacks
    "gi_frame": hook("g = (x for x in [1])\ng.gi_frame.f_globals\nreturn 'ESCAPED'"),
    "gi_frame_getattr": hook("g = (x for x in [1])\nf = getattr(g, 'gi' + '_frame')\n"
                             "getattr(f, 'f_' + 'globals')\nreturn 'ESCAPED'"),
    "gi_code": hook("g = (x for x in [1])\ngetattr(g, 'gi_code')\nreturn 'ESCAPED'"),
    "traceback_frame": hook("try:\n    1 / 0\nexcept Exception as e:\n    e.__traceback__.tb_frame\n"
                            "return 'ESCAPED'"),
    "traceback_getattr": hook("try:\n    1 / 0\nexcept Exception as e:\n    getattr(e, '__traceback__')\n"
                              "return 'ESCAPED'"),
    # resources: memory, time, recursion, processes
    "huge_allocation": hook("x = 'y' * (10 ** 10)\nreturn 'ESCAPED'"),
    "growing_list": hook("x = []\nwhile True:\n    x.append('y' * 10 ** 6)"),
    "infinite_loop": hook("while True:\n    pass"),
    "big_power": hook("x = 10 ** (10 ** 8)\nreturn 'ESCAPED'"),
    "recursion": "def deep(n):\n    return deep(n + 1)\ndef postprocess_observation(observation):\n"
                 "    deep(0)\n    return 'ESCAPED'\n",
    "fork_bomb": hook("while True:\n    os.fork()", "import os"),
    "top_level_loop": "while True:\n    pass\ndef postprocess_observation(observation):\n    return 'ESCAPED'\n",
    "top_level_call": "X = [0] * (10 ** 10)\ndef postprocess_observation(observation):\n    return 'ESCAPED'\n",
    "print_flood": hook("for i in range(10 ** 9):\n    print('x' * 1000)"),
}


def _run_attempt(source: str) -> list[str]:
    """Compile-refused: []; otherwise the hooks' return values (errors are contained)."""
    try:
        hooks = check_source(source)
    except HookCodeError:
        return []
    values = []
    with HookRunner(source, FAST) as runner:
        for name in hooks:
            try:
                values.append(runner.call(name, *SAMPLE_ARGS[name]))
            except HookError:
                pass
    return values


def test_escape_corpus_has_no_escapes(tmp_path):
    assert len(ESCAPES) >= 50
    escaped = []
    for name, template in ESCAPES.items():
        sentinel = tmp_path / f"{name}.escaped"
        values = _run_attempt(template.replace("{S}", str(sentinel)))
        if "ESCAPED" in values or sentinel.exists():
            escaped.append(name)
    assert escaped == []
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere we can see


def test_the_old_bypasses_are_refused_or_cannot_reach_os():
    # with a leading underscore RestrictedPython refuses the code outright
    for name in ("alias_underscore", "default_arg_underscore"):
        with pytest.raises(HookCodeError, match='starts with "_"'):
            check_source(ESCAPES[name])
    # without it the code compiles, and the module proxy has no `sys`
    for name in ("alias", "default_arg", "module_constant", "dict_holder"):
        with HookRunner(ESCAPES[name].replace("{S}", "/nonexistent"), FAST) as runner:
            with pytest.raises(HookError, match="may not use typing.sys"):
                runner.call("postprocess_observation", "obs")


def test_compile_errors_say_why():
    cases = {
        "import os\ndef validate_write(op, args, files):\n    return None\n": "may import only",
        "def validate_write(op, args, files):\n    return open('x')\n": "may not use 'open'",
        "def helper(x):\n    return x\n": "defines none of the hooks",
        "def validate_write(op):\n    return None\n": r"must take \(op, args, files\)",
        "def postprocess_observation(o):\n    return o.__class__\n": 'starts with "_"',
        "from typing import get_type_hints\ndef postprocess_observation(o):\n    return o\n":
            "may not import typing.get_type_hints",
    }
    for source, reason in cases.items():
        with pytest.raises(HookCodeError, match=reason):
            check_source(source)


def test_allowed_modules_work_in_the_worker():
    source = ("import re\nimport json\nimport collections\nfrom collections.abc import Mapping\n"
              "from functools import reduce\nimport textwrap\nimport math\n"
              "SEEN = collections.Counter()\n"
              "def words(text):\n    return re.findall(r'[a-z]+', text.lower())\n"
              "def postprocess_observation(observation):\n"
              "    SEEN.update(words(observation))\n"
              "    total = reduce(lambda a, b: a + b, SEEN.values(), 0)\n"
              "    counts = {}\n    for w in words(observation):\n        counts[w] = counts.get(w, 0) + 1\n"
              "    n = 0\n    n += math.floor(2.5)\n"
              "    return textwrap.shorten(observation, 40) + ' ' + json.dumps(sorted(counts.items())) + f' {total} {n}'\n"
              "def validate_write(op, args, files):\n"
              "    if isinstance(files, Mapping) and args.get('text', '') in files.get(args.get('file', ''), ''):\n"
              "        return 'duplicate'\n    return None\n")
    with HookRunner(source, FAST) as runner:
        assert runner.call("postprocess_observation", "a key a") == 'a key a [["a", 2], ["key", 1]] 3 2'
        assert runner.call("postprocess_observation", "key") == 'key [["key", 1]] 4 2'  # state is kept
        assert runner.call("validate_write", "append", {"file": "m", "text": "x"}, {"m": "x\n"}) == "duplicate"
        assert runner.call("validate_write", "append", {"file": "m", "text": "y"}, {"m": "x\n"}) is None


def test_worker_runs_with_limits_and_without_network():
    with HookRunner("def postprocess_observation(observation):\n    return observation\n", FAST) as runner:
        assert runner.call("postprocess_observation", "x") == "x"
        pid = runner.pid
        limits = Path(f"/proc/{pid}/limits").read_text()
        rows = {line[:26].strip(): line[26:].split() for line in limits.splitlines()[1:]}
        assert rows["Max file size"][:2] == ["0", "0"]
        assert rows["Max processes"][:2] == ["0", "0"]
        assert rows["Max address space"][0] == str(FAST.memory_mb * 1024 * 1024)
        assert int(rows["Max cpu time"][0]) <= FAST.cpu_s + 1
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        assert not os.access(cwd, os.W_OK) or cwd.stat().st_mode & 0o222 == 0
        if network_isolated():  # `unshare --user --net` works on this machine
            assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped


def test_a_hanging_hook_is_killed_and_the_next_call_starts_fresh():
    source = ("def postprocess_observation(observation):\n    while observation == 'hang':\n        pass\n"
              "    return observation\n")
    with HookRunner(source, FAST) as runner:
        assert runner.call("postprocess_observation", "a") == "a"
        first = runner.pid
        started = time.monotonic()
        with pytest.raises(HookTimeout, match="did not finish within 1.5 s"):
            runner.call("postprocess_observation", "hang")
        assert time.monotonic() - started < FAST.call_timeout_s + 1.0
        assert runner.pid is None and not Path(f"/proc/{first}").exists()
        assert runner.call("postprocess_observation", "b") == "b"
        assert runner.pid != first


def test_cpu_and_memory_limits_kill_or_stop_the_hook():
    loop = "def postprocess_observation(observation):\n    while True:\n        pass\n"
    with HookRunner(loop, HookLimits(call_timeout_s=20, cpu_s=1)) as runner:
        with pytest.raises(HookError, match="SIGXCPU: CPU limit"):
            runner.call("postprocess_observation", "x")
    grow = "def postprocess_observation(observation):\n    return 'y' * (400 * 1024 * 1024)\n"
    with HookRunner(grow, FAST) as runner:
        with pytest.raises(HookError, match="MemoryError"):
            runner.call("postprocess_observation", "x")


def test_wrong_return_types_and_raising_hooks_are_errors():
    source = ("def postprocess_observation(observation):\n    return 42\n"
              "def validate_write(op, args, files):\n    raise ValueError('bad write ' + op)\n")
    with HookRunner(source, FAST) as runner:
        with pytest.raises(HookError, match="must return a string, not int"):
            runner.call("postprocess_observation", "x")
        with pytest.raises(HookError, match="ValueError: bad write append"):
            runner.call("validate_write", "append", {}, {})


def _episode(tmp_path: Path, hooks: str, steps: int = 2) -> tuple[list[StepRecord], ScriptedModel]:
    src = Scaffold.builtin("tiny")
    src.write_copy(tmp_path / "scaffold")
    (tmp_path / "scaffold" / "hooks.py").write_text(hooks)
    scaffold = Scaffold(tmp_path / "scaffold")  # not Scaffold.load: no cached instance outlives the test
    model = ScriptedModel(RoutineScript().reply)
    steps_seen: list[StepRecord] = []
    try:
        run_episode(make_env("tiny"), scaffold, Roles(memory=model), seed=0, max_steps=steps,
                    out_dir=tmp_path / "ep", on_step=steps_seen.append)
    finally:
        scaffold.close_hooks()
    return steps_seen, model


def test_valid_hooks_work_in_an_episode(tmp_path):
    hooks = ("def postprocess_observation(observation):\n    return '[hooked] ' + observation\n"
             "def validate_write(op, args, files):\n"
             "    if 'saw' in args.get('text', ''):\n        return 'refused by the hook: no saw'\n"
             "    return None\n")
    steps, model = _episode(tmp_path, hooks)
    assert len(steps) == 2 and all(not s.hook_errors for s in steps)
    assert any("[hooked] " in m.content for call in model.calls for m in call)
    refused = [op for s in steps for op in s.memory_ops if op.op == "append"]
    assert refused and all(not op.ok and op.result == "refused by the hook: no saw" for op in refused)


def test_a_hanging_hook_is_recorded_and_the_episode_goes_on(tmp_path):
    hooks = "def postprocess_observation(observation):\n    while True:\n        pass\n"
    started = time.monotonic()
    steps, _ = _episode(tmp_path, hooks)
    assert len(steps) == 2
    for s in steps:
        assert len(s.hook_errors) == 1 and "did not finish within" in s.hook_errors[0]
    assert time.monotonic() - started < 2 * (HookLimits().call_timeout_s + 3)


def test_a_crashing_hook_is_recorded_and_the_write_goes_on(tmp_path):
    hooks = "def validate_write(op, args, files):\n    return files['missing']\n"
    steps, _ = _episode(tmp_path, hooks, steps=1)
    appends = [op for op in steps[0].memory_ops if op.op == "append"]
    assert appends and all(op.ok and "KeyError" in (op.hook_error or "") for op in appends)


def test_scaffold_hooks_keep_their_signatures(tmp_path):
    import inspect

    Scaffold.builtin("tiny").write_copy(tmp_path / "s")
    (tmp_path / "s" / "hooks.py").write_text("def validate_write(op, args, files):\n    return None\n")
    scaffold = Scaffold(tmp_path / "s")
    try:
        assert scaffold.hook("postprocess_observation") is None  # not defined: no hook, no worker
        assert scaffold.hooks.pid is None
        validate = scaffold.hook("validate_write")
        assert list(inspect.signature(validate).parameters) == ["op", "args", "files"]
        assert validate("append", {"file": "a", "text": "x"}, {"a": ""}) is None
    finally:
        scaffold.close_hooks()
