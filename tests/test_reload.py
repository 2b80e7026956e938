"""Reloading a bundle without a failed call (dualvec.server.reload): a served path (a symlink, or a directory
renamed into place) that changes is loaded beside the served bundle, verified whole, and swapped in; calls running
finish on the old one, which is released when the last of them ends; a damaged bundle is refused with one log line
naming the file and the problem while the old one keeps serving; GetInfo tells which bundle is served. End to end:
8 clients holding a token, four SIGHUP reloads alternating two bundles and one of a truncated bundle, with one and
two server processes: no call fails, and every process swaps. ``--watch`` picks up a flip without a signal."""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from access_helpers import FLAT_BUNDLE, serve  # noqa: F401 - serve is a fixture
from dualvec import Client
from dualvec.client.client import ClientError
from dualvec.indexer.build import BuildConfig, build_bundle
from dualvec.indexer.source_model import SourceModel
from dualvec.indexer.tuning import TuningConfig
from dualvec.kernel.bundle import read_bundle
from dualvec.kernel.search import SearchEngine, SearchQuery
from dualvec.kernel.spaces import Space
from dualvec.server.app import ServerConfig, load_bundles, start_server
from dualvec.server.metrics import ServerMetrics
from dualvec.server.reload import content_id_of

pytestmark = pytest.mark.slow  # starts server processes and signals them: .ci/run covers it, the fast loop does not

TOKEN = "reload-token-Rt42"
SOURCE = FLAT_BUNDLE.parent / "source.json"
QUERY = "the"
K = 5


# ------------------------------------------------------------------------------------------------- bundles

def build(target: Path, swap_spaces: bool) -> Path:
    """A flat bundle of the committed 40-word source; swap_spaces: IN and OUT rows exchanged (other content,
    other neighbours, the same words)."""
    data = json.loads(SOURCE.read_text(encoding="utf-8"))
    rows_in, rows_out = np.asarray(data["in"], np.float32), np.asarray(data["out"], np.float32)
    if swap_spaces:
        rows_in, rows_out = rows_out, rows_in
    source = SourceModel(words=data["words"], counts=np.asarray(data["counts"], np.int64), in_vectors=rows_in,
                         out_vectors=rows_out, source={"kind": "fixture", "swapped": swap_spaces},
                         tokenizer={"kind": "simple"})
    tuning = TuningConfig(tune_queries=20, eval_queries=20, hub_queries=20, timing_queries=4)
    build_bundle(source, target, BuildConfig(index="flat", quiet=True, threads=1, tuning=tuning))
    return target


def neighbours(path: Path) -> tuple[str, ...]:
    engine = SearchEngine(read_bundle(path))
    return tuple(n.word for n in engine.search(SearchQuery((QUERY,), k=K, target_space=Space.OUT)))


def truncated_copy(path: Path, target: Path, name: str = "in.vectors.npy") -> Path:
    shutil.copytree(path, target)
    with open(target / name, "r+b") as fh:
        fh.truncate((target / name).stat().st_size // 2)
    return target


def point(link: Path, target: Path) -> None:
    """Flip the symlink ``link`` to ``target`` in one rename (as `ln -s TARGET tmp && mv -T tmp LINK` does)."""
    tmp = link.with_name(f".{link.name}.new")
    os.symlink(target, tmp)
    os.replace(tmp, link)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two bundles of different content, their content ids and the neighbours each gives QUERY."""
    root = tmp_path_factory.mktemp("reload")
    a, b = build(root / "a.bundle", False), build(root / "b.bundle", True)
    ids = {p: read_bundle(p).manifest.content_id for p in (a, b)}
    answers = {p: neighbours(p) for p in (a, b)}
    assert ids[a] != ids[b] and answers[a] != answers[b]
    return a, b, ids, answers


@pytest.fixture
def served(tmp_path, bundles):
    """A symlink `served` to bundle a, in a directory of the test's own."""
    a = bundles[0]
    link = tmp_path / "served"
    os.symlink(a, link)
    return link


def start(link: Path, **options):
    metrics = ServerMetrics.create()
    cfg = ServerConfig(bundles=(str(link),), port=0, **options)
    return start_server(load_bundles(cfg, metrics), cfg, metrics=metrics), metrics


def info(address: str) -> dict:
    with Client(address, timeout=10) as client:
        return client.info()


def answer(address: str) -> tuple[str, ...]:
    with Client(address, timeout=10) as client:
        return tuple(n.word for n in client.search(QUERY, k=K, target_space="out"))


# ------------------------------------------------------------------------------------------------- in process

def test_get_info_tells_which_bundle_is_served(served, bundles):
    a, _, ids, _ = bundles
    running, _ = start(served)
    try:
        got = info(running.address)
        assert got["content_id"] == ids[a] and len(got["content_id"]) == 64
        assert got["created"] == read_bundle(a).manifest.created
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", got["loaded_at"])
        assert got["model"] == "served"
    finally:
        running.stop(0)


def test_a_version_1_bundle_is_identified_by_the_sha256_of_its_manifest():
    bundle = read_bundle(FLAT_BUNDLE)
    assert bundle.manifest.format_version == 1
    assert content_id_of(bundle) == hashlib.sha256((FLAT_BUNDLE / "manifest.json").read_bytes()).hexdigest()


def test_a_flipped_symlink_is_swapped_in_while_a_running_call_finishes_on_the_old_bundle(served, bundles):
    a, b, ids, answers = bundles
    running, metrics = start(served)
    try:
        old = running.servicer.served
        old_engine = old.engine("")
        gone = weakref.ref(old_engine.bundle)
        entered, release = threading.Event(), threading.Event()
        prepare = old_engine.prepare

        def slow_prepare(*args, **kwargs):  # holds a call inside the old bundle until the swap is done
            entered.set()
            release.wait(10)
            return prepare(*args, **kwargs)

        old_engine.prepare = slow_prepare
        results = []
        caller = threading.Thread(target=lambda: results.append(answer(running.address)))
        caller.start()
        assert entered.wait(10)
        loaded_at = info(running.address)["loaded_at"]

        point(served, b)
        assert running.reload()
        assert info(running.address)["content_id"] == ids[b]
        assert info(running.address)["loaded_at"] > loaded_at
        assert answer(running.address) == answers[b]  # new calls: the new bundle
        new = running.servicer.served
        assert new.batchers[new.default] is not old.batchers[old.default]  # each set has its own batcher

        release.set()
        caller.join(10)
        assert results == [answers[a]]  # the call already running finished on the old bundle

        del old_engine.prepare  # the test's own hook (a cycle through the engine), then the test's references
        del old, old_engine, prepare, slow_prepare
        assert gone() is None  # released when its last call ended (reference counting, no collection needed)
        sample = metrics.registry.get_sample_value
        assert sample("dualvec_bundle_loads_total", {"model": "served"}) == 2
        assert sample("dualvec_bundle_info", {"model": "served", "content_id": ids[b], "created": new.bundle("")
                                               .created, "path": str(served)}) == 1
    finally:
        release.set()
        running.stop(0)


def test_nothing_changed_reloads_nothing(served, bundles, caplog):
    running, _ = start(served)
    try:
        before = running.servicer.served
        with caplog.at_level(logging.INFO, logger="dualvec.server.reload"):
            assert running.reload()
        assert running.servicer.served is before
        assert [r.getMessage() for r in caplog.records if r.name == "dualvec.server.reload"] == [
            f"bundle 'served' unchanged at {served} (content_id {bundles[2][bundles[0]]})"]
    finally:
        running.stop(0)


def test_a_directory_renamed_into_place_is_reloaded(tmp_path, bundles):
    a, b, ids, answers = bundles
    path = tmp_path / "current"
    shutil.copytree(a, path)
    running, _ = start(path)
    try:
        shutil.copytree(b, tmp_path / "next")
        os.rename(path, tmp_path / "previous")
        os.rename(tmp_path / "next", path)
        assert running.reload()
        assert info(running.address)["content_id"] == ids[b] and answer(running.address) == answers[b]
    finally:
        running.stop(0)


def damage_truncated(good: Path, bad: Path) -> str:
    truncated_copy(good, bad)
    return r"in\.vectors\.npy has \d+ bytes, the manifest says \d+"


def damage_manifest(good: Path, bad: Path) -> str:
    shutil.copytree(good, bad)
    text = (bad / "manifest.json").read_text(encoding="utf-8")
    (bad / "manifest.json").write_text(text.replace('"dim": 8', '"dim": 9'), encoding="utf-8")
    return r"manifest\.json does not match its content_id"


def damage_sha256(good: Path, bad: Path) -> str:
    shutil.copytree(good, bad)
    with open(bad / "out.norms.npy", "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 1]))
    return r"out\.norms\.npy fails its sha256 checksum"


def damage_missing(good: Path, bad: Path) -> str:
    shutil.copytree(good, bad)
    (bad / "vocab.tsv").unlink()
    return r"vocab\.tsv is missing"


def damage_version(good: Path, bad: Path) -> str:
    shutil.copytree(good, bad)
    raw = json.loads((bad / "manifest.json").read_text(encoding="utf-8"))
    raw["format_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(raw), encoding="utf-8")
    return r"bundle format version 99"


@pytest.mark.parametrize("damage", [damage_truncated, damage_manifest, damage_sha256, damage_missing,
                                    damage_version])
def test_a_damaged_bundle_is_refused_with_one_line_and_the_old_one_keeps_serving(served, bundles, tmp_path,
                                                                                 caplog, damage):
    """--skip-checksums concerns the start only: a reload checks every sha256."""
    a, b, ids, answers = bundles
    running, metrics = start(served, checksums=False)
    try:
        problem = damage(b, tmp_path / "bad.bundle")
        point(served, tmp_path / "bad.bundle")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dualvec.server"):
            assert not running.reload()
        lines = [r for r in caplog.records if r.name.startswith("dualvec.server")]
        assert len(lines) == 1 and lines[0].levelno == logging.ERROR and lines[0].exc_info is None
        message = lines[0].getMessage()
        assert "\n" not in message and re.search(problem, message), message
        assert f"bundle 'served' not reloaded from {served}" in message
        assert os.path.realpath(tmp_path / "bad.bundle") in message  # the directory the link pointed to
        assert info(running.address)["content_id"] == ids[a] and answer(running.address) == answers[a]
        assert metrics.registry.get_sample_value("dualvec_reload_failures_total", {"what": "bundle"}) == 1

        point(served, b)  # a good bundle afterwards is taken
        assert running.reload()
        assert info(running.address)["content_id"] == ids[b]
    finally:
        running.stop(0)


def test_watch_picks_up_a_flip_and_tries_a_refused_bundle_once(served, bundles, tmp_path, caplog):
    a, b, ids, answers = bundles
    running, _ = start(served, watch=0.05)
    try:
        with caplog.at_level(logging.ERROR, logger="dualvec.server.reload"):
            point(served, truncated_copy(b, tmp_path / "bad.bundle"))
            time.sleep(0.5)  # ten looks: one refusal
            assert len(caplog.records) == 1 and "in.vectors.npy" in caplog.records[0].getMessage()
        assert info(running.address)["content_id"] == ids[a]
        point(served, b)
        deadline = time.monotonic() + 10
        while info(running.address)["content_id"] != ids[b]:
            assert time.monotonic() < deadline, "--watch did not reload the flipped bundle"
            time.sleep(0.05)
        assert answer(running.address) == answers[b]
    finally:
        running.stop(0)


def test_a_negative_watch_is_refused(tmp_path):
    from dualvec.kernel.errors import DualvecError
    from dualvec.server.app import serve_forever

    with pytest.raises(DualvecError, match=r"--watch must be >= 0 seconds \(0: reload on SIGHUP only\), got -1"):
        serve_forever(ServerConfig(bundles=(str(FLAT_BUNDLE),), watch=-1))


# ------------------------------------------------------------------------------------------------- end to end

class Load:
    """Clients in threads of their own, each with its own connection and the token, calling Search until stopped;
    every answer must be one of the two bundles' (never a failure, never a mix)."""

    def __init__(self, address: str, expected: set[tuple[str, ...]], clients: int = 8):
        self.address, self.expected = address, expected
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def run(self) -> None:
        with Client(self.address, token=TOKEN, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    got = tuple(n.word for n in client.search(QUERY, k=K, target_space="out"))
                    problem = None if got in self.expected else f"an answer of neither bundle: {got}"
                except ClientError as exc:
                    problem = f"{exc.code.name}: {exc}"
                with self.lock:
                    if problem:
                        self.failures.append(problem)
                    else:
                        self.ok += 1

    def calls(self) -> int:
        with self.lock:
            return self.ok + len(self.failures)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def served_ids(address: str, connections: int = 8) -> set[str]:
    """The content ids GetInfo tells over new connections (with several processes, they spread over them)."""
    out = set()
    for _ in range(connections):
        with Client(address, token=TOKEN, timeout=10) as client:
            out.add(client.info()["content_id"])
    return out


def server_pids(server) -> list[int]:
    """The processes that serve: the server itself, or the workers of a `--processes` parent."""
    import psutil

    children = psutil.Process(server.proc.pid).children()
    return [c.pid for c in children] or [server.proc.pid]


def mapped(pid: int, directory: Path) -> list[str]:
    """The files of ``directory`` that process ``pid`` maps."""
    prefix = os.path.realpath(directory) + os.sep
    with open(f"/proc/{pid}/maps", encoding="utf-8") as fh:
        return sorted({line.split(None, 5)[-1].strip() for line in fh if prefix in line})


def wait_unmapped(server, directory: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(mapped(pid, directory) for pid in server_pids(server)):
        assert time.monotonic() < deadline, {pid: mapped(pid, directory) for pid in server_pids(server)}
        time.sleep(0.1)


def wait_calls(load: Load, more: int = 20, timeout: float = 30.0) -> None:
    target, deadline = load.calls() + more, time.monotonic() + timeout
    while load.calls() < target:
        assert time.monotonic() < deadline, "the load stalled"
        time.sleep(0.02)


@pytest.mark.parametrize("processes", [1, 2])
def test_sighup_reloads_under_load_fail_no_call(serve, served, bundles, tmp_path, processes):
    a, b, ids, answers = bundles
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n", encoding="utf-8")
    server = serve("--processes", str(processes), "--auth-token-file", str(tokens), bundle=served)
    address = server.address()
    assert served_ids(address) == {ids[a]}
    with pytest.raises(ClientError) as refused, Client(address, timeout=10) as stranger:
        stranger.search(QUERY)
    assert refused.value.code.name == "UNAUTHENTICATED"

    load = Load(address, {answers[a], answers[b]})
    try:
        wait_calls(load)
        for i, target in enumerate((b, a, b, a), 1):
            point(served, target)
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for(r"bundle 'served' reloaded from \S+ \(\S+\): content_id", count=processes * i)
            assert served_ids(address) == {ids[target]}  # every process swapped
            wait_calls(load)
            if i == 1 and processes == 1:  # the bundle loaded at start is released too (the parent of
                wait_unmapped(server, a)   # --processes keeps it, to start a worker from)

        point(served, truncated_copy(b, tmp_path / "truncated.bundle"))
        server.proc.send_signal(signal.SIGHUP)
        refusals = server.wait_for(r"bundle 'served' not reloaded .*", count=processes)
        wait_calls(load)
        assert served_ids(address) == {ids[a]}  # the old bundle keeps answering
        wait_unmapped(server, b)  # served twice and replaced twice: released by every process
        assert all(mapped(pid, a) for pid in server_pids(server))
    finally:
        load.finish()
    assert load.failures == [] and load.ok > 100
    for line in refusals:
        assert re.search(r"truncated\.bundle is damaged: in\.vectors\.npy has \d+ bytes, the manifest says \d+",
                         line.group(0)), line.group(0)
    assert server.stop() == 0
    log = server.log()
    assert len(re.findall(r"bundle 'served' not reloaded", log)) == processes  # one line in each process
    assert "Traceback" not in log and TOKEN not in log


def test_watch_reloads_every_process_without_a_signal(serve, served, bundles):
    a, b, ids, answers = bundles
    server = serve("--processes", "2", "--watch", "0.2", bundle=served)
    address = server.address()
    assert served_ids(address) == {ids[a]}
    server.wait_for(r"watching \S+ every 0.2 s")
    point(served, b)
    server.wait_for(r"bundle 'served' reloaded from", count=2)
    assert served_ids(address) == {ids[b]}
    assert server.stop() == 0


def test_a_worker_started_in_place_of_a_dead_one_serves_the_reloaded_bundle(serve, served, bundles):
    """The --processes parent forks a replacement from the bundle it loaded at start; the new worker reloads the
    served path before it serves, so no connection gets the old bundle back."""
    a, b, ids, answers = bundles
    server = serve("--processes", "2", bundle=served)
    address = server.address()
    point(served, b)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for(r"bundle 'served' reloaded from", count=2)
    os.kill(server_pids(server)[0], signal.SIGKILL)
    server.wait_for(r"worker process \d \(pid \d+\) serving again")
    assert len(re.findall(r"bundle 'served' reloaded from", server.log())) == 3  # the new worker's, before serving
    assert served_ids(address, connections=12) == {ids[b]}
    assert server.stop() == 0
