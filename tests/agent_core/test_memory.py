"""MemoryDir: operations, caps, sandbox (property tests prove nothing is written outside)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent_core.memory import MemoryDir, MemoryLimits, OpResult
from agent_core.memory_input import NAME_RE

SMALL = MemoryLimits(max_file_chars=500, max_total_chars=1_000, max_files=3, max_read_chars=400,
                     max_search_hits=5)


@pytest.fixture
def mem(tmp_path: Path) -> MemoryDir:
    return MemoryDir(tmp_path / "mem", MemoryLimits())


def disk(m: MemoryDir) -> dict[str, str]:
    return {p.name: p.read_bytes().decode("utf-8") for p in sorted(m.root.iterdir())}


# ---------------------------------------------------------------- limits model
def test_limits_defaults_and_descriptions() -> None:
    lim = MemoryLimits()
    assert (lim.max_file_chars, lim.max_total_chars, lim.max_files, lim.max_read_chars,
            lim.max_search_hits) == (20_000, 200_000, 32, 4_000, 20)
    assert all(f.description for f in MemoryLimits.model_fields.values())
    with pytest.raises(ValidationError):
        MemoryLimits(max_files=0)


# ---------------------------------------------------------------- basic ops
def test_create_append_rewrite_delete_write_through(mem: MemoryDir) -> None:
    r = mem.create("notes.md", "hello")
    assert r == OpResult(True, r.text, 5)
    assert not mem.create("notes.md", "again").ok
    r = mem.append("notes.md", "world")
    assert r.ok and r.delta_chars == len("\nworld\n")
    assert disk(mem) == {"notes.md": "hello\nworld\n"} == mem.files()
    assert mem.append("notes.md", "third\n").delta_chars == 6
    assert mem.files()["notes.md"] == "hello\nworld\nthird\n"
    assert not mem.append("notes.md", "   ").ok
    r = mem.rewrite("notes.md", "short")
    assert r.ok and r.delta_chars == 5 - len("hello\nworld\nthird\n")
    assert mem.append("new.md", "made by append").ok
    assert mem.rewrite("other.md", "made by rewrite").ok
    assert disk(mem) == mem.files()
    assert mem.total_chars == sum(map(len, mem.files().values()))
    r = mem.delete("new.md")
    assert r.ok and r.delta_chars == -len("made by append\n")
    assert not (mem.root / "new.md").exists()
    assert not mem.delete("new.md").ok
    assert disk(mem) == mem.files()


def test_replace_first_occurrence_only(mem: MemoryDir) -> None:
    mem.create("a.md", "x y x y")
    r = mem.replace("a.md", "x", "ZZ")
    assert r.ok and r.delta_chars == 1 and "2 occurrences" in r.text
    assert mem.files()["a.md"] == "ZZ y x y"
    bad = mem.replace("a.md", "nope", "q")
    assert not bad.ok and "not found" in bad.text
    assert not mem.replace("a.md", "", "q").ok
    assert not mem.replace("missing.md", "x", "y").ok
    assert mem.replace("a.md", " y x", "").ok
    assert disk(mem)["a.md"] == "ZZ y"


def test_upsert_keyed_lines(mem: MemoryDir) -> None:
    assert mem.upsert("map.md", "3,4", "tree").ok
    assert mem.upsert("map.md", " 3,4 ", "rock ").ok
    assert mem.upsert("map.md", "5,5", "").ok
    assert mem.files()["map.md"] == "3,4: rock\n5,5:\n"
    # hand-written duplicates are collapsed onto the first line
    mem.rewrite("map.md", "note: free text\n3,4: a\n 3,4 : b\n3,40: c\n")
    r = mem.upsert("map.md", "3,4", "c")
    assert r.ok and "removed 1 duplicate" in r.text
    assert mem.files()["map.md"] == "note: free text\n3,4: c\n3,40: c\n"
    for key in ("", "  ", "a:b", "two\nlines", "x" * 201):
        assert not mem.upsert("map.md", key, "v").ok, key
    assert not mem.upsert("map.md", "k", "multi\nline").ok
    assert mem.files()["map.md"] == "note: free text\n3,4: c\n3,40: c\n"


def test_read_ranges_and_numbers(mem: MemoryDir) -> None:
    mem.create("f.md", "".join(f"line{i}\n" for i in range(1, 21)))
    whole = mem.read("f.md").text
    assert whole.splitlines()[1:3] == ["1: line1", "2: line2"]
    part = mem.read("f.md", 3, 5).text.splitlines()
    assert part[1:] == ["3: line3", "4: line4", "5: line5"]
    assert mem.read("f.md", 19, 99).text.splitlines()[1:] == ["19: line19", "20: line20"]
    for start, end in ((0, 3), (21, 22), (5, 4)):
        assert not mem.read("f.md", start, end).ok
    assert mem.apply("read", {"file": "f.md", "lines": " 3 - 4 "}).text.splitlines()[1:] == ["3: line3", "4: line4"]
    assert mem.apply("read", {"file": "f.md", "lines": "7"}).text.splitlines()[1:] == ["7: line7"]
    assert mem.apply("read", {"file": "f.md", "lines": "19-"}).text.splitlines()[1:] == ["19: line19", "20: line20"]
    assert mem.apply("read", {"file": "f.md", "start": "+2", "end": "2"}).text.splitlines()[1:] == ["2: line2"]
    assert mem.apply("read", {"file": "f.md", "lines": ""}).text == whole
    for bad in ("abc", "3-x", "-3", "1e3", "3--4"):
        r = mem.apply("read", {"file": "f.md", "lines": bad})
        assert not r.ok and "start-end" in r.text, bad
    assert mem.tail("f.md", 2).text.splitlines()[1:] == ["19: line19", "20: line20"]
    assert mem.apply("tail", {"file": "f.md", "n": " 1 "}).text.splitlines()[1:] == ["20: line20"]
    assert not mem.apply("tail", {"file": "f.md", "n": "0"}).ok
    assert not mem.apply("tail", {"file": "f.md", "n": "many"}).ok
    mem.create("empty.md")
    assert mem.read("empty.md").ok and "empty" in mem.read("empty.md").text


def test_reads_are_bounded_with_a_note(tmp_path: Path) -> None:
    lim = MemoryLimits(max_read_chars=400)
    m = MemoryDir(tmp_path / "m", lim)
    m.create("big.md", "".join(f"row {i} " + "x" * 30 + "\n" for i in range(300)))
    m.create("long.md", "y" * 5_000)
    for r in (m.read("big.md"), m.tail("big.md", 300), m.read("long.md"), m.tail("long.md"),
              m.search("x"), m.search("y"), m.list()):
        assert r.ok and len(r.text) <= lim.max_read_chars, r.text
    assert "truncated" in m.read("big.md").text and "READ big.md|" in m.read("big.md").text
    assert "truncated" in m.tail("big.md", 300).text
    assert m.tail("big.md", 300).text.splitlines()[-1].startswith("300: row 299")


def test_search_literal_case_insensitive(mem: MemoryDir) -> None:
    mem.create("a.md", "Diamond at (3,4)\nregex .* [a-\nnothing here\n")
    mem.create("b.md", "a+b \\d{2} ((((((((((x\nDIAMOND pickaxe\n")
    r = mem.search("diamond")
    assert r.ok and r.text.splitlines()[1:] == ["a.md:1: Diamond at (3,4)", "b.md:2: DIAMOND pickaxe"]
    for q, hit in ((".*", "a.md:2:"), ("[a-", "a.md:2:"), ("(3,4)", "a.md:1:"), ("a+b", "b.md:1:"),
                   ("\\d{2}", "b.md:1:"), ("((((((((((x", "b.md:1:")):
        res = mem.search(q)
        assert res.ok and hit in res.text and res.text.count("\n") == 1, q
    assert mem.search("^regex").text.startswith("no hits")
    assert not mem.search("").ok and not mem.search("two\nlines").ok


def test_search_hit_cap(tmp_path: Path) -> None:
    m = MemoryDir(tmp_path / "m", SMALL)
    m.create("a.md", "k\n" * 50)
    text = m.search("K").text
    assert len(text.splitlines()) == 1 + SMALL.max_search_hits + 1 and "max_search_hits" in text


def test_list(mem: MemoryDir) -> None:
    assert mem.list().ok and mem.list().text.startswith("0 files")
    mem.create("b.md", "1\n2\n")
    mem.create("a.md", "xyz")
    assert mem.list().text.splitlines() == ["2 files, 3 lines, 7/200,000 chars:",
                                            "a.md: 1 lines, 3 chars", "b.md: 2 lines, 4 chars"]
    assert mem.total_lines == 3 and mem.total_chars == 7


# ---------------------------------------------------------------- caps
def test_caps_refuse_without_truncating(tmp_path: Path) -> None:
    m = MemoryDir(tmp_path / "m", SMALL)
    assert m.create("a.md", "x" * 400).ok
    r = m.append("a.md", "y" * 200)
    assert not r.ok and "max_file_chars=500" in r.text and "now 400" in r.text
    assert m.files()["a.md"] == "x" * 400 == (m.root / "a.md").read_text()
    assert not m.create("big.md", "z" * 501).ok
    assert m.create("b.md", "x" * 450).ok
    r = m.create("c.md", "x" * 200)
    assert not r.ok and "max_total_chars=1,000" in r.text and "now 850" in r.text
    assert m.create("c.md", "x").ok
    r = m.create("d.md")
    assert not r.ok and "max_files=3" in r.text
    assert not m.upsert("d.md", "k", "v").ok and not m.append("d.md", "t").ok and not m.rewrite("d.md", "").ok
    assert sorted(os.listdir(m.root)) == ["a.md", "b.md", "c.md"]
    assert m.total_chars == 851
    # shrinking is always allowed and frees room; deleting frees a file slot
    assert m.rewrite("a.md", "short").ok and m.total_chars == 456
    assert m.delete("c.md").ok and m.create("d.md", "y" * 500).ok


def test_shrinking_a_file_already_over_the_cap(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / "huge.md").write_text("a" * 900 + "TAIL")
    m = MemoryDir(root, SMALL)
    assert m.total_chars == 904
    assert not m.append("huge.md", "more").ok
    assert m.replace("huge.md", "TAIL", "").ok
    assert m.total_chars == 900


# ---------------------------------------------------------------- names and text
@pytest.mark.parametrize("name", ["", " ", ".", "..", "../x", "a/b", "a\\b", "/etc/passwd", "C:\\x", "a..b",
                                  ".hidden", "-dash", "a\x00b", "a\nb", "tab\tname", "é.md", "x" * 65,
                                  "~/x", "$HOME", "a b", ".tmp-abc", "./../x", "x/"])
def test_bad_names_refused_with_rule(mem: MemoryDir, name: str) -> None:
    r = mem.create(name, "t")
    assert not r.ok and "file names are" in r.text
    assert os.listdir(mem.root) == []


def test_name_normalisation(mem: MemoryDir) -> None:
    assert mem.create(" ./notes.md \n", "t").ok
    assert mem.files() == {"notes.md": "t"}
    assert mem.read("./notes.md").ok and not mem.read(".//notes.md").ok


def test_text_rules(mem: MemoryDir) -> None:
    assert not mem.create("a.md", "bad\x00nul").ok and mem.files() == {}
    weird = "emoji 🦀, RTL שלום, combining é, \u2028 sep, \x1b[31m ansi, ctrl \x07"
    assert mem.create("u.md", weird).ok
    assert (mem.root / "u.md").read_bytes() == weird.encode("utf-8")
    assert MemoryDir(mem.root).files()["u.md"] == weird
    r = mem.append("u.md", "lone \ud800 surrogate")
    assert not r.ok and "surrogate" in r.text and mem.files()["u.md"] == weird
    assert not mem.create(123, "x").ok and not mem.append("u.md", None).ok  # type: ignore[arg-type]


# ---------------------------------------------------------------- sandbox on disk
def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (root / "link.md").symlink_to(secret)
    (root / "sub").mkdir()
    m = MemoryDir(root)
    assert "link.md" not in m.files() and "sub" not in m.files()
    for r in (m.read("link.md"), m.create("link.md", "x"), m.append("link.md", "x"), m.rewrite("link.md", "x"),
              m.upsert("link.md", "k", "v"), m.delete("link.md"), m.create("sub", "x"), m.rewrite("sub", "x")):
        assert not r.ok
    assert m.search("secret").text.startswith("no hits")
    # a cached file replaced by a symlink behind the agent's back
    assert m.create("a.md", "mine").ok
    os.unlink(root / "a.md")
    (root / "a.md").symlink_to(secret)
    for r in (m.read("a.md"), m.tail("a.md"), m.append("a.md", "x"), m.rewrite("a.md", "x"),
              m.replace("a.md", "mine", "x"), m.upsert("a.md", "k", "v"), m.delete("a.md")):
        assert not r.ok and "symlink" in r.text
    assert secret.read_text() == "secret" and (root / "a.md").is_symlink()


def test_reload_ignores_junk_and_cleans_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "m"
    m = MemoryDir(root)
    m.seed_files({"a.md": "alpha\n", "b.md": "beta"})
    (root / ".tmp-dead").write_text("half")
    (root / "bad name").write_text("ignored")
    m2 = MemoryDir(root)
    assert m2.files() == {"a.md": "alpha\n", "b.md": "beta"}
    assert not (root / ".tmp-dead").exists()
    with pytest.raises(ValueError):
        m2.seed_files({"../escape": "x"})


def test_no_temp_files_left_and_failed_write_keeps_state(tmp_path: Path) -> None:
    m = MemoryDir(tmp_path / "m")
    for i in range(20):
        m.append("log.md", f"entry {i}")
        m.upsert("map.md", str(i % 3), str(i))
    assert sorted(os.listdir(m.root)) == ["log.md", "map.md"]
    before, total = m.files(), m.total_chars
    shutil.rmtree(m.root)  # every later write fails for real
    for r in (m.append("log.md", "will fail"), m.create("new.md"), m.upsert("map.md", "0", "x")):
        assert not r.ok and "failed" in r.text and r.delta_chars == 0
    assert m.files() == before and m.total_chars == total


# ---------------------------------------------------------------- apply
def test_apply_dispatch_and_errors(mem: MemoryDir) -> None:
    assert mem.apply("CREATE", {"file": "a.md", "text": "one"}).ok
    assert mem.apply(" Append ", {"file": "a.md", "text": "two"}).ok
    assert mem.apply("upsert", {"file": "k.md", "key": "x", "value": "1"}).ok
    assert mem.apply("search", {"query": "TWO"}).text.splitlines()[1] == "a.md:2: two"
    assert mem.apply("search", {"keyword": "two"}).ok
    assert mem.apply("list", {}).ok
    assert mem.apply("tail", {"file": "a.md"}).ok
    assert mem.apply("replace", {"file": "a.md", "old": "one", "new": "1"}).ok
    assert mem.apply("delete", {"name": "k.md"}).ok
    for op, args in (("frobnicate", {}), ("done", {}), ("action", {"name": "x"}), ("append", {"file": "a.md"}),
                     ("read", {"file": "a.md", "colour": "red"}), ("list", {"x": "y"}), ("read", {})):
        r = mem.apply(op, args)
        assert not r.ok and r.text, (op, args)
    assert mem.files() == {"a.md": "1\ntwo\n"}


# ---------------------------------------------------------------- property tests
NASTY = ["..", ".", "/", "\\", "/tmp/x", "../x", "../../x", "../../../sibling.txt", "..\\x", "a/../b",
         "~", "\x00", "a\x00", "C:\\evil", "./", "../mem2/x", "secret.txt", "..%2fx", "\u202e", "ｆｉｌｅ"]
names = st.one_of(
    st.text(max_size=80),
    st.sampled_from(NASTY),
    st.from_regex(NAME_RE, fullmatch=True),
    st.builds(lambda k, n: "../" * k + n, st.integers(1, 4), st.from_regex(NAME_RE, fullmatch=True)),
    st.builds(lambda n: "/" + n, st.from_regex(NAME_RE, fullmatch=True)),
)
texts = st.one_of(st.text(max_size=200), st.sampled_from(["", "\x00", "a\nb", "k: v", "x" * 700]))
op_calls = st.one_of(
    st.tuples(st.just("create"), names, texts),
    st.tuples(st.just("append"), names, texts),
    st.tuples(st.just("rewrite"), names, texts),
    st.tuples(st.just("replace"), names, texts, texts),
    st.tuples(st.just("upsert"), names, texts, texts),
    st.tuples(st.just("read"), names),
    st.tuples(st.just("tail"), names),
    st.tuples(st.just("delete"), names),
    st.tuples(st.just("search"), texts),
    st.tuples(st.just("list")),
    st.tuples(st.just("apply"), st.text(max_size=10), st.dictionaries(st.text(max_size=8), texts, max_size=4)),
)


def snapshot(base: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under base except the memory root: type and content digest."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d != skip]
        for n in dirnames + filenames:
            p = here / n
            st_ = os.lstat(p)
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st_.st_mode) else ""
            out[str(p.relative_to(base))] = (stat.S_IFMT(st_.st_mode), st_.st_size, digest)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.lists(op_calls, max_size=25))
def test_nothing_is_written_outside_root_and_ops_never_raise(calls: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root = base / "a" / "b" / "c" / "mem"
        (base / "a" / "b" / "c" / "mem2").mkdir(parents=True)
        (base / "a" / "b" / "c" / "sibling.txt").write_text("sibling")
        (base / "secret.txt").write_text("secret")
        m = MemoryDir(root, SMALL)
        before = snapshot(base, root)
        total = 0
        for call in calls:
            op, *args = call
            res = getattr(m, op)(*args)
            assert isinstance(res, OpResult) and isinstance(res.text, str) and res.text
            total += res.delta_chars
            if res.ok and op in ("create", "append", "rewrite", "upsert"):
                name = args[0].strip().removeprefix("./")
                assert NAME_RE.fullmatch(name) and ".." not in name
                assert (root / name).is_file()
        assert snapshot(base, root) == before
        entries = list(os.scandir(root))
        assert all(e.is_file(follow_symlinks=False) and NAME_RE.fullmatch(e.name) and ".." not in e.name
                   for e in entries)
        assert {e.name: Path(e.path).read_bytes().decode("utf-8") for e in entries} == m.files()
        assert total == m.total_chars == sum(map(len, m.files().values()))
        assert len(m.files()) <= SMALL.max_files and all(len(t) <= SMALL.max_file_chars for t in m.files().values())
        assert m.total_chars <= SMALL.max_total_chars
        assert m.total_lines == sum(len(t.split("\n")) - t.endswith("\n") for t in m.files().values() if t)


keys = st.text(alphabet="ab ,:1\n", max_size=4)


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), keys, st.text(alphabet="xy :\n", max_size=4)), max_size=30))
def test_upsert_never_duplicates_a_key(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:
    m = MemoryDir(tmp_path_factory.mktemp("up"))
    upserted = set()
    for is_upsert, key, value in ops:
        if is_upsert:
            r = m.upsert("map.md", key, value)
            if r.ok:
                upserted.add(key.strip())
                lines = m.files()["map.md"].splitlines()
                matching = [ln for ln in lines if ln.partition(":")[1] and ln.partition(":")[0].strip() == key.strip()]
                assert matching == [f"{key.strip()}: {value.strip()}".rstrip()]
        else:  # free text written around the table
            m.append("map.md", f"{key}: {value}")
    if "map.md" in m.files():
        heads = [ln.partition(":")[0].strip() for ln in m.files()["map.md"].splitlines()]
        if not any(not u for u, _, _ in ops):
            assert len(heads) == len(set(heads)) and set(heads) == upserted


@settings(max_examples=100, deadline=None)
@given(contents=st.lists(st.text(alphabet="aAbB.*()[]\\+?^$ ßẞ\n", max_size=60), min_size=1, max_size=3),
       query=st.text(alphabet="aAbB.*()[]\\+?^$ ßẞ", min_size=1, max_size=3))
def test_search_matches_a_naive_literal_scan(tmp_path_factory: pytest.TempPathFactory, contents: list[str],
                                             query: str) -> None:
    m = MemoryDir(tmp_path_factory.mktemp("s"), MemoryLimits(max_search_hits=1_000, max_read_chars=100_000))
    for i, c in enumerate(contents):
        m.create(f"f{i}.md", c)
    r = m.search(query)
    q = query.strip()
    if not q:
        assert not r.ok
        return
    expected = [f"f{i}.md:{n}: {line}" for i, c in enumerate(contents)
                for n, line in enumerate(c.split("\n")[: len(c.split("\n")) - c.endswith("\n")] if c else [], 1)
                if q.casefold() in line.casefold()]
    got = r.text.splitlines()[1:] if not r.text.startswith("no hits") else []
    assert got == expected


def test_five_thousand_line_memory_stays_fast(tmp_path: Path) -> None:
    m = MemoryDir(tmp_path / "m")
    for i in range(10):
        assert m.rewrite(f"f{i}.md", "".join(f"({j},{i}) seen tree {j % 7}\n" for j in range(500))).ok
    assert m.total_lines == 5_000
    t = time.perf_counter()
    for k in range(100):  # one step's worth of typical operations
        m.append("log.md", f"step {k}")
        m.upsert("f3.md", f"k{k % 5}", "v")
        m.search("(42,3)")
        m.read("f1.md", 10, 30)
        m.list()
    assert time.perf_counter() - t < 5.0  # ~0.5 ms per step measured; generous bound
    assert m.search("(42,3)").text.splitlines()[1] == "f3.md:43: (42,3) seen tree 0"


def test_look_ups_that_return_nothing_say_so(mem):
    assert mem.apply("list", {}).empty  # no files
    assert mem.apply("create", {"file": "a.md", "text": ""}).ok
    for op, args in (("read", {"file": "a.md"}), ("tail", {"file": "a.md"}), ("search", {"query": "key"})):
        res = mem.apply(op, args)
        assert res.ok and res.empty, op
    assert mem.apply("append", {"file": "a.md", "text": "the key is here"}).ok
    for op, args in (("read", {"file": "a.md"}), ("tail", {"file": "a.md"}), ("search", {"query": "key"}),
                     ("list", {})):
        res = mem.apply(op, args)
        assert res.ok and not res.empty, op
