"""The cold tier's files: one saved sequence state each, written atomically, read only when
every byte of its header matches the model and context that would load it.

A file is `MAGIC`, a 4-byte header length, a JSON header, then the state. The header holds the
format version, the model's fingerprint, llama-cpp-python's version, the context parameters
that shape the state, the session's key, its tokens, and the state's size and CRC-32. Names are
hashes, never client text; files are opened without following symlinks.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("roost.sessions")

MAGIC = b"ROOSTKV\x00"
FORMAT_VERSION = 1
SUFFIX = ".kv"
_LENGTH = struct.Struct("<I")
MAX_HEADER_BYTES = 64 * 2**20  # a header lists tokens: 64 MiB is 16 million of them
# no symlink followed; a FIFO planted in the directory must not block the open
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NONBLOCK", 0)
)


class SessionFileError(ValueError):
    """A file that is not a loadable state for this model and context."""


@dataclass(frozen=True)
class FileHeader:
    """What a session file says about itself; `identity` must equal the loader's."""

    key: str  # the session key (see sessions.SessionKey.text)
    tokens: list[int]
    num_bytes: int  # of the state payload
    crc32: int
    identity: dict[str, Any]  # format, model fingerprint, llama-cpp-python, context params

    def to_json(self) -> bytes:
        body = {
            "key": self.key,
            "tokens": self.tokens,
            "num_bytes": self.num_bytes,
            "crc32": self.crc32,
            "identity": self.identity,
        }
        return json.dumps(body, separators=(",", ":")).encode()


def prepare_dir(path: Path) -> Path:
    """Create the directory with mode 0700 (a session holds conversation state); refuse a
    symlink or a non-directory, and make one that others may write private again."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise SessionFileError(f"{path} is not a directory")
    if info.st_mode & 0o022:
        os.chmod(path, 0o700)
    return path


def write(path: Path, header: FileHeader, state: np.ndarray) -> int:
    """Write atomically: a temporary file, fsync, rename over `path`, fsync the directory.
    Returns the bytes written."""
    head = header.to_json()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(MAGIC)
            out.write(_LENGTH.pack(len(head)))
            out.write(head)
            out.write(memoryview(state[: header.num_bytes]))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return len(MAGIC) + _LENGTH.size + len(head) + header.num_bytes


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_header(path: Path, identity: dict[str, Any]) -> tuple[FileHeader, int]:
    """The header of a file, and the offset of its payload; reads no payload. Raises
    SessionFileError for anything that is not a loadable file for `identity`."""
    with _open(path) as src:
        return _parse_header(src, identity, os.fstat(src.fileno()).st_size)


def _open(path: Path) -> Any:
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:  # ELOOP: a symlink; ENOENT: deleted meanwhile
        raise SessionFileError(f"cannot open {path.name}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SessionFileError(f"{path.name} is not a regular file")
    return os.fdopen(fd, "rb")


def _parse_header(src: Any, identity: dict[str, Any], size: int) -> tuple[FileHeader, int]:
    lead = src.read(len(MAGIC) + _LENGTH.size)
    if len(lead) != len(MAGIC) + _LENGTH.size or not lead.startswith(MAGIC):
        raise SessionFileError("not a roost session file")
    (length,) = _LENGTH.unpack(lead[len(MAGIC) :])
    if length > MAX_HEADER_BYTES:
        raise SessionFileError("header too large")
    try:
        body = json.loads(src.read(length))
        header = FileHeader(
            key=str(body["key"]),
            tokens=[int(t) for t in body["tokens"]],
            num_bytes=int(body["num_bytes"]),
            crc32=int(body["crc32"]),
            identity=dict(body["identity"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise SessionFileError(f"unreadable header: {exc}") from None
    if header.identity != identity:
        changed = sorted(
            k for k in identity.keys() | header.identity.keys()
            if identity.get(k) != header.identity.get(k)
        )  # fmt: skip
        raise SessionFileError(f"made for another model or context ({', '.join(changed)})")
    offset = len(MAGIC) + _LENGTH.size + length
    if size != offset + header.num_bytes:
        raise SessionFileError("truncated or padded")
    return header, offset


def read(path: Path, identity: dict[str, Any], buffer: np.ndarray) -> FileHeader:
    """Read a whole file into `buffer` (uint8, large enough), its checksum verified."""
    with _open(path) as src:
        header, _ = _parse_header(src, identity, os.fstat(src.fileno()).st_size)
        if buffer.size < header.num_bytes:
            raise SessionFileError("buffer too small")
        view = memoryview(buffer)[: header.num_bytes]
        if src.readinto(view) != header.num_bytes:
            raise SessionFileError("truncated")
    if checksum(buffer, header.num_bytes) != header.crc32:
        raise SessionFileError("checksum mismatch")
    return header


def checksum(state: np.ndarray, num_bytes: int) -> int:
    return zlib.crc32(memoryview(state)[:num_bytes])


def remove(path: Path) -> None:
    """Delete a file, or a symlink itself (never what it points to)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot delete session file %s: %s", path.name, exc)
