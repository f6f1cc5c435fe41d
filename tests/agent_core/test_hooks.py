"""Scaffold hooks run confined: RestrictedPython at compile time, vetted module proxies, a
worker process with limits under an OS sandbox (Landlock + seccomp, no capabilities) that
holds for root and fails closed. The escape corpus must give 0 escapes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent_core.models.base import Roles
from agent_core.episode import run_episode
from agent_core.episode import HooksConfig
from agent_core.hooks import (SECCOMP_LIBRARY_ENV, HookCodeError, HookConfinementError, HookDisabled, HookError,
                              HookLimits, HookOutputCut, HookRunner, HookTimeout, check_source, live_workers)
from agent_core.trace import read_trace
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
    # the OS layer's targets, reached through the Python layer (issue 25's attempts)
    "chmod_scratch": hook("os.chmod('.', 0o777)\nopen('{S}', 'w')\nreturn 'ESCAPED'", "import os"),
    "output_flood": "def postprocess_observation(observation):\n    return 'x' * (8 * 10 ** 6)\n",
    "refusal_flood": "def validate_write(op, args, files):\n    return 'x' * (8 * 10 ** 6)\n",
    "getattr_resource": hook("getattr(math, 'sys').modules['resource']\nreturn 'ESCAPED'", "import math"),
    "json_codecs_open": hook("json.codecs.open('{S}', 'w')\nreturn 'ESCAPED'", "import json"),
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


def test_worker_runs_with_limits_and_confined():
    with HookRunner("def postprocess_observation(observation):\n    return observation\n", FAST) as runner:
        assert runner.call("postprocess_observation", "x") == "x"
        pid = runner.pid
        limits = Path(f"/proc/{pid}/limits").read_text()
        rows = {line[:26].strip(): line[26:].split() for line in limits.splitlines()[1:]}
        assert rows["Max file size"][:2] == ["0", "0"]
        assert rows["Max address space"][0] == str(FAST.memory_mb * 1024 * 1024)
        assert int(rows["Max cpu time"][0]) <= FAST.cpu_s + 1
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        for caps in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            assert int(status[caps], 16) == 0, caps  # no capabilities, even when we are root
        assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
    assert not Path(f"/proc/{pid}").exists()  # stopped and reaped


#: plain Python (the RestrictedPython guard off) trying what the OS layer must refuse; each
#: attempt reports "refused ..." or "DONE ..."
OS_PROBE = """
import ctypes, json, os, resource, socket, subprocess
D = {dir!r}

def attempt(fn):
    try:
        return "DONE " + repr(fn())[:80]
    except BaseException as exc:
        return "refused " + type(exc).__name__ + ": " + str(exc)[:80]

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return pid

def raw_socket():  # socket(AF_INET, SOCK_STREAM, 0) as a bare system call (x86-64 number)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(41, 2, 1, 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return fd

def connect(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.settimeout(1)
    s.connect(("127.0.0.1", {port}))
    return s.send(b"escaped")

TRIES = {{
    "fork": fork,
    "subprocess": lambda: subprocess.run(["/bin/true"]),
    "exec": lambda: os.execv("/bin/true", ["/bin/true"]),
    "write_cwd": lambda: open("written.txt", "w").write("x"),
    "write_existing": lambda: open(D + "/victim.txt", "w").write("x"),
    "append_existing": lambda: open(D + "/victim.txt", "a").write("x"),
    "create": lambda: open(D + "/created.txt", "x").write("x"),
    "unlink": lambda: os.unlink(D + "/victim.txt"),
    "rename": lambda: os.rename(D + "/victim.txt", D + "/moved.txt"),
    "mkdir": lambda: os.mkdir(D + "/made"),
    "truncate": lambda: os.truncate(D + "/victim.txt", 0),
    "chmod_scratch": lambda: os.chmod(os.getcwd(), 0o777),
    "read_secret": lambda: open(D + "/secret.txt").read(),
    "read_proc": lambda: open("/proc/1/environ").read(),
    "tcp": lambda: connect(socket.SOCK_STREAM),
    "udp": lambda: connect(socket.SOCK_DGRAM),
    "raw_socket_syscall": raw_socket,
    "signal_parent": lambda: os.kill(os.getppid(), 0),
    "raise_memory_limit": lambda: resource.setrlimit(resource.RLIMIT_AS, (-1, -1)),
}}
SAFE = [k for k in TRIES if k not in ("fork", "subprocess", "exec")]

def postprocess_observation(observation):
    names = SAFE if observation == "safe" else list(TRIES)
    return json.dumps({{k: attempt(TRIES[k]) for k in names}})
"""


def _os_probe(tmp_path: Path, confinement: str, which: str) -> tuple[dict[str, str], list[bytes]]:
    import json
    import socket
    import threading

    (tmp_path / "secret.txt").write_text("the secret")
    (tmp_path / "victim.txt").write_text("intact")
    os.chmod(tmp_path / "victim.txt", 0o666)
    received: list[bytes] = []
    with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", tcp.getsockname()[1]))
        tcp.settimeout(0.2)
        udp.settimeout(0.2)
        stop = threading.Event()

        def listen() -> None:
            while not stop.is_set():
                for sock in (tcp, udp):
                    try:
                        if sock is tcp:
                            conn, _ = tcp.accept()
                            received.append(conn.recv(100))
                            conn.close()
                        else:
                            received.append(udp.recv(100))
                    except OSError:
                        pass

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        source = OS_PROBE.format(dir=str(tmp_path), port=tcp.getsockname()[1])
        try:
            with HookRunner(source, FAST, confinement=confinement, python_guard=False,
                            preload=("ctypes", "socket", "subprocess", "resource", "encodings.idna")) as runner:
                report = json.loads(runner.call("postprocess_observation", which))
        finally:
            stop.set()
            thread.join()
    return report, received


def test_the_os_layer_alone_refuses_processes_files_network_and_secrets(tmp_path):
    """The Python-level guard off: only the OS layer stands, and it holds (as root, as CI runs)."""
    report, received = _os_probe(tmp_path, "os", "all")
    assert set(report) >= {"fork", "exec", "write_cwd", "create", "unlink", "rename", "mkdir", "chmod_scratch",
                           "tcp", "udp", "read_secret"}
    done = {k: v for k, v in report.items() if not v.startswith("refused")}
    assert done == {}
    assert received == []  # nothing reached our listeners
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt", "victim.txt"]
    assert (tmp_path / "victim.txt").read_text() == "intact"


def test_the_os_probe_sees_an_unconfined_worker_escape(tmp_path):
    """The same probe without the OS layer: the attempts go through, so the test above can fail."""
    report, received = _os_probe(tmp_path, "none", "safe")
    assert report["read_secret"] == "DONE 'the secret'"
    assert report["create"].startswith("DONE") and report["tcp"].startswith("DONE")
    assert b"escaped" in received
    assert (tmp_path / "created.txt").exists()


def test_hooks_are_refused_where_the_os_layer_cannot_be_set_up(tmp_path, monkeypatch):
    monkeypatch.setenv(SECCOMP_LIBRARY_ENV, str(tmp_path / "no-libseccomp.so"))
    with pytest.raises(HookConfinementError, match="libseccomp could not be loaded.*apt-get install libseccomp2.*"
                                                   "confinement: none"):
        HookRunner("def validate_write(op, args, files):\n    return None\n")
    hooks = "def postprocess_observation(observation):\n    return '[hooked] ' + observation\n"
    with pytest.raises(HookConfinementError, match="libseccomp could not be loaded"):
        _episode(tmp_path, hooks)
    assert not (tmp_path / "ep").exists()  # refused before anything was written
    # the run's explicit choice: hooks run unconfined, and the header and summary say so
    steps, model = _episode(tmp_path / "chosen", hooks, hooks_config=HooksConfig(confinement="none"))
    assert any("[hooked] " in m.content for call in model.calls for m in call)
    trace = read_trace(tmp_path / "chosen" / "ep" / "trace.jsonl")
    assert trace.header.hooks_confinement == "none" and trace.summary.hooks_confinement == "none"


def test_hook_output_is_capped_and_the_cut_is_an_error(tmp_path):
    big = "def postprocess_observation(observation):\n    return observation * 100000\n"
    with HookRunner(big, FAST) as runner:
        with pytest.raises(HookOutputCut, match=f"returned 200000 characters; at most {FAST.max_output_chars}") as exc:
            runner.call("postprocess_observation", "ab")
        assert exc.value.value == "ab" * (FAST.max_output_chars // 2)
    steps, model = _episode(tmp_path, big, steps=1)
    assert "the output was cut" in steps[0].hook_errors[0]
    longest = max(len(m.content) for call in model.calls for m in call)
    assert HookLimits().max_output_chars <= longest < HookLimits().max_output_chars + 20_000


def test_a_hook_that_keeps_timing_out_is_disabled():
    hang = "def postprocess_observation(observation):\n    while True:\n        pass\n"
    limits = HookLimits(call_timeout_s=0.5, cpu_s=1, memory_mb=256, max_timeouts=2)
    with HookRunner(hang, limits) as runner:
        for _ in range(2):
            with pytest.raises(HookTimeout):
                runner.call("postprocess_observation", "x")
        started = time.monotonic()
        with pytest.raises(HookDisabled, match="disabled for the rest of the episode: it timed out 2 times"):
            runner.call("postprocess_observation", "x")
        assert time.monotonic() - started < 0.1 and runner.pid is None  # no worker started for it


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


def _episode(tmp_path: Path, hooks: str, steps: int = 2, seed: int = 0,
             hooks_config: HooksConfig | None = None) -> tuple[list[StepRecord], ScriptedModel]:
    src = Scaffold.builtin("tiny")
    if not (tmp_path / "scaffold").exists():
        src.write_copy(tmp_path / "scaffold")
        (tmp_path / "scaffold" / "hooks.py").write_text(hooks)
    scaffold = Scaffold(tmp_path / "scaffold")  # not Scaffold.load: no cached instance outlives the test
    model = ScriptedModel(RoutineScript().reply)
    steps_seen: list[StepRecord] = []
    run_episode(make_env("tiny"), scaffold, Roles(memory=model), seed=seed, max_steps=steps,
                out_dir=tmp_path / ("ep" if seed == 0 else f"ep{seed}"), on_step=steps_seen.append,
                hooks=hooks_config)
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


def test_a_hanging_hook_is_recorded_then_disabled_and_the_episode_goes_on(tmp_path):
    hooks = "def postprocess_observation(observation):\n    while True:\n        pass\n"
    limits = HookLimits()
    started = time.monotonic()
    steps, _ = _episode(tmp_path, hooks, steps=limits.max_timeouts + 2)
    assert len(steps) == limits.max_timeouts + 2
    for s in steps[:limits.max_timeouts]:
        assert len(s.hook_errors) == 1 and "did not finish within" in s.hook_errors[0]
    for s in steps[limits.max_timeouts:]:
        assert len(s.hook_errors) == 1 and "disabled for the rest of the episode" in s.hook_errors[0]
    assert time.monotonic() - started < limits.max_timeouts * (limits.call_timeout_s + 2) + 5


def test_hook_state_never_crosses_episodes(tmp_path):
    """One worker per episode: a hook's module state starts afresh in every episode."""
    hooks = ("SEEN = []\ndef postprocess_observation(observation):\n    SEEN.append(1)\n"
             "    return f'[call {len(SEEN)}] ' + observation\n")
    firsts = []
    for seed in (0, 1):
        steps, model = _episode(tmp_path, hooks, steps=2, seed=seed)
        firsts.append(sorted({m.content.split("[call ")[1].split("]")[0] for call in model.calls for m in call
                              if "[call " in m.content}))
    assert firsts == [["1", "2"], ["1", "2"]]  # each episode's hook counted from its own first call


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
    with scaffold.hook_runner() as runner:
        assert runner.function("postprocess_observation") is None  # not defined: no hook, no worker
        assert runner.pid is None
        validate = runner.function("validate_write")
        assert list(inspect.signature(validate).parameters) == ["op", "args", "files"]
        assert validate("append", {"file": "a", "text": "x"}, {"a": ""}) is None
    assert scaffold.hook_runner() is not scaffold.hook_runner()  # a fresh runner for every episode
