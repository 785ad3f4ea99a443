"""Saved sequence states beyond the running context: a RAM tier (LRU, byte budget) and a disk
tier (LRU, byte budget, surviving restarts). Named sessions are found by their key, anonymous
ones by the longest prefix their tokens share with a new prompt.

The engine thread puts states in and takes them out; disk reads and writes happen on the
caller's worker thread (loading before a request is queued) or on the store's writer thread.
Everything is keyed by owner (the API key that made it): no owner sees another's states.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from roost.engine import session_files as files
from roost.engine.kv_cache import common_prefix_len

log = logging.getLogger("roost.sessions")

MAX_SESSION_ID = 512  # characters of a client's session id


class Tier(enum.Enum):
    HOT = "hot"  # in a sequence of the running context
    RAM = "ram"
    DISK = "disk"


@dataclass(frozen=True)
class SessionKey:
    """Whose state: the owner (a hash of the API key, "" without one) and the session's name,
    or None for an anonymous state found by its tokens (then `digest` tells them apart)."""

    owner: str
    name: str | None
    digest: str = ""  # anonymous: a hash of the tokens

    @property
    def is_named(self) -> bool:
        return self.name is not None

    def text(self) -> str:
        """What a file's header holds: "=" marks a name, "#" a digest (no name is mistaken
        for an anonymous state, whatever it starts with)."""
        return f"{self.owner}\x00{'=' + self.name if self.name is not None else '#' + self.digest}"

    def file_name(self) -> str:
        return hashlib.sha256(self.text().encode()).hexdigest() + files.SUFFIX


@dataclass(frozen=True)
class SessionRef:
    """Who sends a request, and the session it names (None: anonymous reuse only)."""

    tenant: str = ""
    key: SessionKey | None = None
    param: str = "user"  # the request field (or header) that named it, for errors


def anonymous(owner: str, tokens: list[int]) -> SessionKey:
    digest = hashlib.sha256(np.asarray(tokens, np.int32).tobytes()).hexdigest()[:32]
    return SessionKey(owner, None, digest)


@dataclass
class Saved:
    """One saved state of one model, in RAM (`state` set) or only on disk."""

    model: str
    key: SessionKey
    tokens: list[int]
    num_bytes: int
    state: np.ndarray | None = None  # RAM tier
    on_disk: bool = False  # a file holds these very tokens
    last_used: float = field(default_factory=time.time)
    is_leaving_ram: bool = False  # queued for the disk; `state` goes once it is written
    was_on_disk: bool = False  # read back from its file (a disk hit once restored)
    is_queued: bool = False  # a write of it is on its way

    @property
    def tier(self) -> Tier:
        return Tier.RAM if self.state is not None and not self.is_leaving_ram else Tier.DISK


@dataclass(frozen=True)
class SessionBudgets:
    ram_bytes: int  # 0: no RAM tier
    disk_bytes: int  # 0: no disk tier
    dir: Path
    sync_every_turn: bool
    min_tokens: int = 16  # shorter states are not worth keeping


@dataclass
class _Stats:
    hits: dict[str, int] = field(default_factory=lambda: {t.value: 0 for t in Tier})
    misses: int = 0


class SessionStore:
    """Every model's saved states. Thread-safe; the writer thread owns the disk writes."""

    def __init__(self, budgets: SessionBudgets) -> None:
        self.budgets = budgets
        self._lock = threading.RLock()
        self._entries: OrderedDict[tuple[str, SessionKey], Saved] = OrderedDict()  # LRU first
        self._identities: dict[str, dict[str, Any]] = {}  # model → what its files must say
        self._dirs: dict[str, Path] = {}
        self.stats = _Stats()
        self._writes: queue.SimpleQueue[tuple[str, Saved, np.ndarray] | None] = queue.SimpleQueue()
        self._pending_writes = 0
        self._idle = threading.Condition(self._lock)
        self._writer = threading.Thread(target=self._write_loop, name="session-writer", daemon=True)
        self._writer.start()

    # -- models --------------------------------------------------------------------------------

    def add_model(self, model: str, identity: dict[str, Any]) -> None:
        """Index the model's files (headers only); those that do not match are deleted."""
        self._identities[model] = identity
        if not self.budgets.disk_bytes:
            return
        folder = self.budgets.dir / hashlib.sha256(model.encode()).hexdigest()[:16]
        try:
            self._dirs[model] = files.prepare_dir(folder)
            paths = list(folder.iterdir())
        except OSError as exc:  # the model still serves, without a disk tier
            self._dirs.pop(model, None)
            log.warning("model %s: no disk tier for sessions (%s: %s)", model, folder, exc)
            return
        found = []
        for path in paths:
            if path.name.startswith("."):  # a temporary file a crash left behind
                files.remove(path)
                continue
            try:
                header, _ = files.read_header(path, identity)
                key = _key_of(header.key)
                if path.name != key.file_name():
                    raise files.SessionFileError("named for another key")
            except files.SessionFileError as exc:
                log.warning("skipping session file %s: %s; deleted", path.name, exc)
                files.remove(path)
                continue
            mtime = path.lstat().st_mtime
            found.append(Saved(model, key, header.tokens, header.num_bytes, None, True, mtime))
        with self._lock:
            for saved in sorted(found, key=lambda s: s.last_used):
                self._entries[(model, saved.key)] = saved
        if found:
            log.info("model %s: %d saved sessions on disk", model, len(found))

    def path(self, model: str, key: SessionKey) -> Path:
        return self._dirs[model] / key.file_name()

    # -- lookups (any thread) ----------------------------------------------------------------

    def find(
        self, model: str, key: SessionKey | None, owner: str, tokens: list[int]
    ) -> Saved | None:
        """The saved state to resume `tokens` from: the named session's, or (anonymous) the
        owner's state sharing the longest prefix with them."""
        with self._lock:
            if key is not None:
                return self._entries.get((model, key))
            best, best_len = None, 0
            for (m, k), saved in self._entries.items():
                if m != model or k.is_named or k.owner != owner:
                    continue
                size = common_prefix_len(saved.tokens, tokens)
                if size > best_len:
                    best, best_len = saved, size
            return best

    def count(self, tier: Tier | None) -> None:
        """A request resumed from `tier`, or (None) from nothing."""
        with self._lock:
            if tier is None:
                self.stats.misses += 1
            else:
                self.stats.hits[tier.value] += 1

    def load(self, model: str, saved: Saved) -> bool:
        """Bring a disk-only state into RAM (blocking: call it in a worker thread). A file that
        fails its checks is deleted; False then."""
        path = self.path(model, saved.key)
        buffer = np.empty(saved.num_bytes, np.uint8)
        try:
            header = files.read(path, self._identities[model], buffer)
            if header.tokens != saved.tokens:
                raise files.SessionFileError("its tokens changed")
        except files.SessionFileError as exc:
            log.warning("session file %s not loaded: %s; deleted", path.name, exc)
            self.drop(model, saved.key)
            return False
        with self._lock:
            if self._entries.get((model, saved.key)) is saved:
                # kept over the RAM budget until its restore is planned (used())
                saved.state, saved.was_on_disk = buffer, True
                self._touch(model, saved)
        return True

    # -- engine thread ---------------------------------------------------------------------------

    def put(
        self, model: str, key: SessionKey, tokens: list[int], state: np.ndarray, sync: bool = False
    ) -> Future[None] | None:
        """Keep a state the engine saved from a sequence (its bytes are `state`, owned now).
        With `sync`, it is also written to disk: the future resolves once it is."""
        saved = Saved(model, key, list(tokens), state.size, state)
        with self._lock:
            old = self._entries.pop((model, key), None)
            if old is not None and old.on_disk and old.tokens == saved.tokens:
                saved.on_disk = True
            self._entries[(model, key)] = saved
            written = self._queue_write(saved) if sync and not saved.on_disk else None
            self._fit_ram()
        return written

    def used(self, model: str, saved: Saved) -> None:
        """A restore of this state is planned (the plan holds its bytes)."""
        with self._lock:
            self._touch(model, saved)
            self._fit_ram()

    # -- endpoints ----------------------------------------------------------------------------

    def entries(self, owner: str) -> list[Saved]:
        with self._lock:
            return [s for (_, k), s in self._entries.items() if k.owner == owner]

    def drop(self, model: str, key: SessionKey) -> bool:
        """Forget a state in every tier; True if there was one."""
        with self._lock:
            saved = self._entries.pop((model, key), None)
        if model in self._dirs:
            files.remove(self.path(model, key))
        return saved is not None

    # -- budgets and the writer --------------------------------------------------------------

    def _touch(self, model: str, saved: Saved) -> None:
        saved.last_used = time.time()
        self._entries.move_to_end((model, saved.key))

    def _fit_ram(self) -> None:
        """Over the RAM budget: the least recently used states leave RAM (to disk if named or
        worth keeping and the disk tier is on)."""
        in_ram = [s for s in self._entries.values() if s.state is not None and not s.is_leaving_ram]
        total = sum(s.num_bytes for s in in_ram)
        for saved in in_ram:  # oldest first
            if total <= self.budgets.ram_bytes:
                break
            total -= saved.num_bytes
            if saved.on_disk:
                saved.state = None
            elif self.budgets.disk_bytes and saved.model in self._dirs:
                saved.is_leaving_ram = True  # readable from RAM until the file is written
                if not saved.is_queued:
                    self._queue_write(saved)
            else:
                del self._entries[(saved.model, saved.key)]

    def _queue_write(self, saved: Saved) -> Future[None] | None:
        if not self.budgets.disk_bytes or saved.model not in self._dirs:
            return None
        assert saved.state is not None
        saved.is_queued = True
        self._pending_writes += 1
        write = _Write(saved, saved.state)
        self._writes.put(write)
        return write.done

    def _write_loop(self) -> None:
        while (item := self._writes.get()) is not None:
            try:
                self._write(item.saved.model, item.saved, item.state)
            except Exception:
                log.exception("writing session state failed")
            item.done.set_result(None)  # written or not: nobody waits forever
            with self._lock:
                self._pending_writes -= 1
                self._idle.notify_all()

    def _write(self, model: str, saved: Saved, state: np.ndarray) -> None:
        with self._lock:
            if self._entries.get((model, saved.key)) is not saved:
                return  # replaced or deleted meanwhile
            tokens = list(saved.tokens)
        header = files.FileHeader(
            saved.key.text(),
            tokens,
            saved.num_bytes,
            files.checksum(state, saved.num_bytes),
            self._identities[model],
        )
        path = self.path(model, saved.key)
        files.write(path, header, state)
        with self._lock:
            saved.is_queued = False
            if self._entries.get((model, saved.key)) is not saved:
                files.remove(path)  # deleted (or replaced) while it was being written
                return
            saved.on_disk = True
            if saved.is_leaving_ram:
                saved.state, saved.is_leaving_ram = None, False
            self._fit_disk()

    def _fit_disk(self) -> None:
        on_disk = [s for s in self._entries.values() if s.on_disk]
        total = sum(s.num_bytes for s in on_disk)
        for saved in on_disk:  # oldest first
            if total <= self.budgets.disk_bytes:
                break
            total -= saved.num_bytes
            saved.on_disk = False
            files.remove(self.path(saved.model, saved.key))
            if saved.state is None:
                del self._entries[(saved.model, saved.key)]

    def flush(self, timeout: float = 60) -> None:
        """Write every RAM state to disk and wait for the writer (at shutdown)."""
        with self._lock:
            for saved in list(self._entries.values()):
                if saved.state is not None and not saved.on_disk:
                    self._queue_write(saved)
            self._idle.wait_for(lambda: self._pending_writes == 0, timeout)

    def close(self) -> None:
        self.flush()
        self._writes.put(None)
        self._writer.join(10)


@dataclass(frozen=True)
class _Write:
    saved: Saved
    state: np.ndarray  # held here: the entry may leave RAM before the write is done
    done: Future[None] = field(default_factory=Future)


def _key_of(text: str) -> SessionKey:
    owner, _, rest = text.partition("\x00")
    if rest.startswith("#"):
        return SessionKey(owner, None, rest[1:])
    if rest.startswith("="):
        return SessionKey(owner, rest[1:])
    raise files.SessionFileError("no session key")


@dataclass(frozen=True)
class ModelSessions:
    """One model's view of the store, as its engine uses it."""

    store: SessionStore
    model: str

    @property
    def min_tokens(self) -> int:
        return self.store.budgets.min_tokens

    @property
    def sync_every_turn(self) -> bool:
        return self.store.budgets.sync_every_turn

    def find(self, key: SessionKey | None, owner: str, tokens: list[int]) -> Saved | None:
        return self.store.find(self.model, key, owner, tokens)

    def count(self, tier: Tier | None) -> None:
        self.store.count(tier)

    def used(self, saved: Saved) -> None:
        self.store.used(self.model, saved)

    def put(
        self, key: SessionKey, tokens: list[int], state: np.ndarray, sync: bool = False
    ) -> Future[None] | None:
        return self.store.put(self.model, key, tokens, state, sync)
