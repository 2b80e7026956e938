"""Replacing a served bundle without failing a call: the served set, and the reload that swaps it.

What a server serves is one immutable ``ServedSet``: every bundle by name (``ServedBundle``: its engine, where it
is served from, its content id and build time, when this process loaded it) and the Search batcher of each. The
servicer holds one reference to the current set; a call reads that reference once at its start and takes its
engine and batcher from that set, so it never sees a mix of two. A SearchStream takes the set afresh for each group
of requests it answers, so that a long stream does not hold a replaced bundle.

A reload (``BundleReloader.reload``: SIGHUP, through ``RunningServer.reloaders``; ``watch``: ``serve --watch``)
looks at each served path (a directory, or a symlink to one) and, where it changed since the bundle was loaded,
loads the bundle now there beside the one being served: reads and verifies it as a whole (format version, the
manifest's content_id, every file's size and sha256, whatever ``--skip-checksums`` says about the start),
prefaults it when the server prefaults, and builds its engine and batcher. Then one assignment puts a new set in
place. Calls already running finish on the old set; nothing closes it, and it is released (its maps unmapped) by
reference counting when its last call ends. A bundle that fails is refused with one log line naming the file and
the problem, counted in ``dualvec_reload_failures_total{what="bundle"}``, and the one loaded before keeps serving.

"Changed" is the path's ``DiskIdentity``: the directory it resolves to (a flipped symlink), that directory's inode
(a directory renamed into place) and the manifest's inode, size and times (a manifest rewritten). Every server
process reloads by itself: `serve --processes` forwards SIGHUP to each, and with ``--watch`` each polls.
"""
from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from dualvec.kernel.bundle import MANIFEST, read_bundle, sha256_of
from dualvec.kernel.errors import BundleError, DualvecError, UnknownModel
from dualvec.kernel.search import Limits, SearchEngine
from dualvec.server.batching import Batcher
from dualvec.server.host.prefault import prepare_for_serving

log = logging.getLogger("dualvec.server.reload")

LOAD_ATTEMPTS = 3  # a path that changes while its bundle loads is read again, this many times at most


# ------------------------------------------------------------------------------------------------- on disk

@dataclass(frozen=True)
class DiskIdentity:
    """What a served path is now: the directory it resolves to, that directory's (device, inode), and its
    manifest's (inode, size, mtime, ctime). Equal identities: the same bundle files, as far as a stat can tell."""

    directory: str
    directory_key: tuple[int, int]
    manifest_key: tuple[int, int, int, int]


def disk_identity(path: str | os.PathLike) -> DiskIdentity | None:
    """The identity of the bundle at ``path`` now (a symlink followed), or None when it has no manifest to stat."""
    real = os.path.realpath(path)
    try:
        d = os.stat(real)
        m = os.stat(os.path.join(real, MANIFEST))
    except OSError:
        return None
    return DiskIdentity(real, (d.st_dev, d.st_ino), (m.st_ino, m.st_size, m.st_mtime_ns, m.st_ctime_ns))


def content_id_of(bundle) -> str:
    """The id of a loaded bundle's content: its manifest's content_id (format version 2 on), or for a version-1
    bundle the sha256 of its manifest.json (which lists every file's size and sha256)."""
    return bundle.manifest.content_id or sha256_of(Path(bundle.path) / MANIFEST)


def rfc3339_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def bundle_names(paths: Iterable[str]) -> list[tuple[str, str]]:
    """(name, path) of each served path: a bundle is named by its path's last part, made unique with -2, -3..."""
    out: list[tuple[str, str]] = []
    taken: set[str] = set()
    for path in paths:
        name = base = Path(path).name
        i = 2
        while name in taken:
            name, i = f"{base}-{i}", i + 1
        taken.add(name)
        out.append((name, str(path)))
    return out


# ------------------------------------------------------------------------------------------------- what is served

@dataclass(frozen=True, eq=False)
class ServedBundle:
    """One bundle as a server process serves it. ``path``: where it is served from (what `serve` was given: a
    directory, or a symlink to one); ``identity``: what that path was when the bundle was read from it."""

    name: str
    path: str
    engine: SearchEngine
    content_id: str
    created: str
    loaded_at: str
    identity: DiskIdentity | None
    seconds: float = 0.0

    @classmethod
    def of_engine(cls, name: str, engine: SearchEngine) -> "ServedBundle":
        """An engine loaded elsewhere (tests, `load_engines`), served from its bundle's path."""
        return cls(name, str(engine.bundle.path), engine, content_id_of(engine.bundle),
                   engine.bundle.manifest.created, rfc3339_now(), disk_identity(engine.bundle.path))

    @property
    def bundle(self):
        return self.engine.bundle


def load_bundle(name: str, path: str, *, limits: Limits | None = None, checksums: bool = True,
                prefault: bool = True) -> ServedBundle:
    """Read the bundle at ``path`` (from the directory it resolves to now), verify it (checksums: every file's
    sha256 too), prefault it, and build its engine. A path that changes while it loads is read again. Raises
    BundleError (or another DualvecError) naming what is wrong."""
    started = time.perf_counter()
    for _ in range(LOAD_ATTEMPTS):
        before = disk_identity(path)
        bundle = read_bundle(before.directory if before else path, checksums=checksums)
        content_id = content_id_of(bundle)
        if disk_identity(path) == before:
            break
    else:
        raise BundleError(f"bundle {path} changed while it was being read, {LOAD_ATTEMPTS} times: put the new "
                          f"bundle in place with one rename or symlink flip")
    if prefault:
        prepare_for_serving(bundle)
    engine = SearchEngine(bundle, limits or Limits())
    return ServedBundle(name, os.path.abspath(path), engine, content_id, bundle.manifest.created, rfc3339_now(),
                        before, time.perf_counter() - started)


@dataclass(frozen=True, eq=False)
class ServedSet:
    """Every bundle a server process serves, by name (the first is the default, model ""), with the Search batcher
    of each (none when ``batch_size`` is 1). Immutable: a reload makes a new one (``replacing``)."""

    bundles: Mapping[str, ServedBundle]
    batchers: Mapping[str, Batcher]
    batch_size: int = 64
    concurrent_batches: int = 2
    on_batch: Callable[[str], Callable[[int], None]] | None = None  # a bundle name -> its batch-size observer
    engines: Mapping[str, SearchEngine] = field(init=False, repr=False)
    default: str = field(init=False)  # the first bundle's name

    def __post_init__(self) -> None:
        if not self.bundles:
            raise ValueError("no bundle to serve")
        object.__setattr__(self, "engines", MappingProxyType({n: b.engine for n, b in self.bundles.items()}))
        object.__setattr__(self, "default", next(iter(self.bundles)))

    @classmethod
    def of(cls, bundles: Mapping[str, ServedBundle | SearchEngine], *, batch_size: int = 64,
           concurrent_batches: int = 2, on_batch: Callable[[str], Callable[[int], None]] | None = None
           ) -> "ServedSet":
        served = {name: b if isinstance(b, ServedBundle) else ServedBundle.of_engine(name, b)
                  for name, b in bundles.items()}
        return cls(MappingProxyType(served), MappingProxyType(
            {n: _batcher(b, batch_size, concurrent_batches, on_batch) for n, b in served.items()}
            if batch_size > 1 else {}), batch_size, concurrent_batches, on_batch)

    def replacing(self, new: Mapping[str, ServedBundle]) -> "ServedSet":
        """This set with some bundles replaced, each with a batcher of its own; the others keep theirs."""
        bundles = {n: new.get(n, b) for n, b in self.bundles.items()}
        batchers = dict(self.batchers)
        if self.batch_size > 1:
            for name in new:
                batchers[name] = _batcher(new[name], self.batch_size, self.concurrent_batches, self.on_batch)
        return ServedSet(MappingProxyType(bundles), MappingProxyType(batchers), self.batch_size,
                         self.concurrent_batches, self.on_batch)

    def bundle(self, name: str) -> ServedBundle:
        """The bundle served under ``name`` ("" for the default); raises UnknownModel for a name not served."""
        try:
            return self.bundles[name or self.default]
        except KeyError:
            raise UnknownModel(f"model: no bundle named {name!r} is served here (served: "
                               f"{', '.join(self.bundles)})") from None

    def engine(self, name: str) -> SearchEngine:
        return self.bundle(name).engine

    def batcher(self, name: str) -> Batcher | None:
        return self.batchers.get(name or self.default)


def _batcher(bundle: ServedBundle, batch_size: int, concurrent_batches: int, on_batch) -> Batcher:
    batcher = Batcher(bundle.engine.search_prepared, max_batch=batch_size, max_running=concurrent_batches)
    if on_batch is not None:
        batcher.on_batch = on_batch(bundle.name)
    return batcher


# ------------------------------------------------------------------------------------------------- reloading

class BundleReloader:
    """Reloads the bundles of a servicer (anything with a ``served`` ServedSet attribute) whose paths changed, and
    swaps them in. ``reload()`` is a reloader of RunningServer (SIGHUP); ``watch(seconds)`` polls in a thread of
    its own until ``stop()``. Reloads of one process run one at a time."""

    def __init__(self, servicer, *, metrics=None, prefault: bool = True):
        self.servicer = servicer
        self.metrics = metrics
        self.prefault = prefault
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # what watch() last saw at each path (it tries a path again only once that changes)
        self._seen: dict[str, DiskIdentity | None] = {n: b.identity for n, b in servicer.served.bundles.items()}

    def reload(self) -> bool:
        """Reload every bundle whose path changed since it was loaded. True unless one was refused."""
        return self._reload(lambda name, bundle, now: now != bundle.identity, tell_unchanged=True)

    def poll(self) -> bool:
        """Reload every bundle whose path changed since the last look and holds a manifest (a path caught between
        two renames is left for the next look). True unless one was refused."""
        def changed(name: str, bundle: ServedBundle, now: DiskIdentity | None) -> bool:
            return now is not None and now != self._seen.get(name)
        return self._reload(changed)

    def _reload(self, changed: Callable[[str, ServedBundle, DiskIdentity | None], bool],
                tell_unchanged: bool = False) -> bool:
        with self._lock:
            current = self.servicer.served
            new: dict[str, ServedBundle] = {}
            ok = True
            for name, old in current.bundles.items():
                now = disk_identity(old.path)
                if not changed(name, old, now):
                    if tell_unchanged:
                        log.info("bundle %r unchanged at %s (content_id %s)", name, old.path, old.content_id)
                    continue
                self._seen[name] = now
                try:
                    new[name] = load_bundle(name, old.path, limits=old.engine.limits, checksums=True,
                                            prefault=self.prefault)
                except Exception as exc:  # noqa: BLE001 - whatever it was, the bundle served before stays
                    ok = False
                    self._refused(name, old, exc)
                    continue
                self._seen[name] = new[name].identity
            if not new:
                return ok
            self.servicer.served = current.replacing(new)  # the swap: calls from now on take the new set
            for name, bundle in new.items():
                self._loaded(name, bundle)
        # the new bundle's vocabulary is long-lived: leave it out of later garbage collections, as at start
        gc.freeze()
        return ok

    def _loaded(self, name: str, bundle: ServedBundle) -> None:
        b = bundle.bundle
        log.info("bundle %r reloaded from %s (%s): content_id %s, built %s, %d words x %d dims (%.1f s); the one "
                 "it replaces is released when its last call ends", name, bundle.path, b.path, bundle.content_id,
                 bundle.created or "at an unknown time", b.vocab_size, b.dim, bundle.seconds)
        if self.metrics is not None:
            self.metrics.bundle_loaded(name)
            self.metrics.serving(name, b.manifest, bundle.path, content_id=bundle.content_id)

    def _refused(self, name: str, old: ServedBundle, exc: Exception) -> None:
        problem = str(exc) if isinstance(exc, DualvecError) else f"{type(exc).__name__}: {exc}"
        log.error("bundle %r not reloaded from %s, the one loaded before (content_id %s) keeps serving: %s",
                  name, old.path, old.content_id, " ".join(problem.split()))
        if self.metrics is not None:
            self.metrics.reload_failed("bundle")

    # ----------------------------------------------------------------------------------------------- --watch
    def watch(self, seconds: float) -> None:
        """Poll every ``seconds`` in a daemon thread, until ``stop()``."""
        if seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, args=(seconds,), name="dualvec-watch", daemon=True)
        self._thread.start()

    def _watch(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a failed look must not stop the watching
                log.exception("watching the served bundles failed; looking again in %.1f s", seconds)

    def stop(self) -> None:
        self._stop.set()
