"""Every file a run writes, and how: its two outputs, and one private state directory beside them.

``<results>.state/`` holds everything a run keeps besides its outputs::

    lock            who is running (pid, start time); the lock itself is held on the outputs
    checkpoint      the resume cache (store/checkpoint.py), unless --checkpoint puts it elsewhere
    ids             one digest per input line read (ids.py)
    sent            the lines sent and not yet recorded (checkpoint.SentJournal)
    batches         the Batch API jobs (batch/jobs.py); part-N.jsonl: their files to upload
    metrics         the run's counters every few seconds, bounded (report/metrics.py)
    summary         the run's latest summary, replaced every few seconds (report/metrics.py)

Files in it are opened without following symbolic links and created 0600, the
directory 0700; so are the outputs, and a link at any of them is refused, dangling
or not. Nothing is written before ``check_paths`` has looked at every path;
nothing that is not proven to be a run's own file is changed. A file replaced
whole is written under no name until it is complete (``atomic_file``).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from ..config import Outputs
from ..errors import ConfigError, OutputError

PRIVATE = 0o600
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
RECORD_START = b'{"id":"batch_req_'  # how every line asyncbatch writes begins (records.py)
CHECKPOINT_START = b'{"version":'


def check_paths(outputs: Outputs) -> None:
    """Refuse, before anything is created, outputs and state files that cannot be this run's.

    :raises ConfigError: naming the path and what to do.
    """
    results, errors, custom_checkpoint, state = outputs.results, outputs.errors, outputs.checkpoint, outputs.state
    if results.exists() and errors.exists() and os.path.samefile(results, errors):  # the more telling refusal first
        raise ConfigError(f"-o {results} and --errors {errors} are the same file (a link): give two different files")
    for option, path in (("-o", results), ("--errors", errors)):
        _check_output(option, path)
    if custom_checkpoint is not None:
        _check_own(custom_checkpoint, "--checkpoint", CHECKPOINT_START, "an asyncbatch checkpoint")
    _check_not_link(state.dir)
    if state.dir.exists() and not state.dir.is_dir():
        raise ConfigError(f"{state.dir} is in the way: asyncbatch keeps a run's state in a directory of that name")
    for path in state.files():
        _check_not_link(path)
        _check_not_link(path.with_name(path.name + ".tmp"))


def _check_output(option: str, path: Path) -> None:
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: the directory {path.parent} does not exist")
    _check_own(path, option, RECORD_START, "an asyncbatch output")


def _check_own(path: Path, option: str, start: bytes, what: str) -> None:
    """``path`` may not exist yet; if it does, it must be a regular file that begins as ours does, not a link."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(
            f"{option} {path} is a symbolic link (to {os.readlink(path)}); asyncbatch does not write through "
            "links, and its target is left alone. HINT: give the target's own path, or remove the link"
        )
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{option} {path} is a directory; give a file name, e.g. {path / 'run.results.jsonl'}")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{option} {path} is not a regular file")
    if info.st_nlink > 1:
        raise _hard_link(path, info.st_nlink, f"{option} ")
    if not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(f"{option} {path}: no permission to read and write it")
    with os.fdopen(os.open(path, os.O_RDONLY | NOFOLLOW), "rb") as f:
        head = f.read(2 * len(start)).replace(b" ", b"")[: len(start)]  # json.dumps's spacing is ours too
    if head and not (head.startswith(start) or start.startswith(head)):
        raise ConfigError(
            f"{option} {path} is not {what} (it begins {head[:20]!r}); it is left as it is. "
            "HINT: choose another file name, or move that file away"
        )


def _check_not_link(path: Path) -> None:
    if path.is_symlink():
        raise ConfigError(
            f"{path} is a symbolic link; asyncbatch does not follow links for its own state files. "
            "HINT: remove the link (its target is left alone)"
        )
    with suppress(OSError):
        if (links := path.lstat().st_nlink) > 1 and not path.is_dir():
            raise _hard_link(path, links)


def _hard_link(path: Path, links: int, option: str = "") -> ConfigError:
    """A file of more than one name: written in place, every name would change, and the others are not ours."""
    return ConfigError(
        f"{option}{path} is one of {links} names of the same file (a hard link); asyncbatch does not write "
        "through links, and the file is left alone. HINT: give a file of one name: remove the other names, or "
        "choose another file name"
    )


def prepare_state(outputs: Outputs) -> None:
    """Create the state directory, and remove what a killed run left half-replaced in it."""
    private_dir(outputs.state.dir)
    _remove_stale_tmp(outputs)


def _remove_stale_tmp(outputs: Outputs) -> None:
    """Under the run's lock, a ``<file>.tmp`` of its own is a killed run's unfinished replace: removed.

    Beside the outputs, only one that begins as its file does (a user's file of that name is left alone).
    """
    state = outputs.state
    owned = [(path, b"") for path in state.files() if path.parent == state.dir]
    beside = [(outputs.errors, RECORD_START)]
    if outputs.checkpoint is not None:
        beside.append((outputs.checkpoint, CHECKPOINT_START))
    for path, start in [*owned, *beside]:
        tmp = path.with_name(path.name + ".tmp")
        with suppress(OSError), os.fdopen(os.open(tmp, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW), "rb") as f:
            if stat.S_ISREG(os.fstat(f.fileno()).st_mode) and start.startswith(f.read(len(start))):
                tmp.unlink()


def private_dir(path: Path) -> None:
    """A directory of the run's own, made 0700 if missing; a link there (planted since ``check_paths``) is refused.

    :raises ConfigError: ``path`` is a link or not a directory. OutputError: it cannot be created.
    """
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except FileExistsError:
        info = path.lstat()
    except OSError as exc:
        raise OutputError(f"cannot create {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        _check_not_link(path)
        raise ConfigError(f"{path} is in the way: asyncbatch keeps a run's state in a directory of that name")


def open_private(path: Path, flags: int, mode: int = PRIVATE) -> int:
    """``os.open`` for the run's own files: never through a symbolic or hard link; created 0600 (or ``mode``).

    :raises ConfigError: ``path`` is a symbolic link, or a file of more than one name. Other errors are
        OSError, naming ``path``.
    """
    try:
        fd = os.open(path, (flags & ~os.O_TRUNC) | NOFOLLOW, mode)  # emptied once known to be ours alone
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a symbolic link; asyncbatch does not follow links for its state") from None
        raise
    try:
        if (links := os.fstat(fd).st_nlink) > 1:  # a hard link planted since ``check_paths``
            raise _hard_link(path, links)
        if flags & os.O_TRUNC:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_private(path: Path) -> BinaryIO:
    """A state file, new or emptied, to write (never through a link; 0600)."""
    return os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb")


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """An I/O error in the block becomes an OutputError that names ``path`` (the OS often does not)."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_all(fd: int, data: bytes, path: Path, at: int | None = None) -> None:
    """Write every byte (at offset ``at``, if given), or raise OutputError naming ``path``."""
    view = memoryview(data)
    with naming(path):
        while view:
            n = os.write(fd, view) if at is None else os.pwrite(fd, view, at)
            view = view[n:]
            at = None if at is None else at + n


@contextmanager
def atomic_file(path: Path, tmp: Path | None = None, mode: int = PRIVATE, sync: bool = True) -> Iterator[BinaryIO]:
    """``path`` written anew through a temporary file beside it: a reader sees the old file or the new one.

    The temporary file has no name while it is written (Linux's ``O_TMPFILE``): a process killed at any
    instant leaves nothing behind. It is named ``tmp`` (else ``<path>.tmp``) only to be renamed over
    ``path``. Where the file system has no unnamed files it is named from the start, created afresh, never
    through a link, and removed on any failure; one a killed process left is removed by the next write of
    ``path``, or before it: by the next run (``prepare_state``), by the next export (``sweep_stale``).
    ``sync``: on disk before it replaces ``path`` (False for a file worth less than an fsync, which a crash
    of the machine may leave empty).
    """
    tmp = tmp or path.with_name(path.name + ".tmp")
    with naming(tmp):
        fd = _unnamed(path.parent, mode)
        named = fd is None
        if fd is None:
            tmp.unlink(missing_ok=True)  # a stale one (or a link planted there): removed, never followed
            fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    f = os.fdopen(fd, "wb")
    try:
        with naming(tmp):
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())
            if not named:
                _name(f.fileno(), tmp)
                named = True
    except BaseException:
        f.close()
        if named:
            tmp.unlink(missing_ok=True)
        raise
    f.close()
    try:
        with naming(path):
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _unnamed(directory: Path, mode: int) -> int | None:
    """A new file in ``directory`` that has no name yet (None where the OS or the file system has none)."""
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise


def _name(fd: int, tmp: Path) -> None:
    """Give the unnamed file ``fd`` the name ``tmp`` (a stale file of that name is replaced, a link never followed)."""
    tmp.unlink(missing_ok=True)
    anchor = os.open(tmp.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:  # a directory fd makes Python call linkat(AT_SYMLINK_FOLLOW): /proc's link leads to the open file
        os.link(f"/proc/self/fd/{fd}", tmp, src_dir_fd=anchor, follow_symlinks=True)
    finally:
        os.close(anchor)


def scratch_name(path: Path) -> Path:
    """The temporary name this process writes ``path`` under when others may write it too (``export -o``)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def sweep_stale(path: Path) -> list[Path]:
    """Remove the temporary files (``scratch_name``) that processes now gone left for ``path``; return them."""
    removed = []
    prefix = f".{path.name}."
    with suppress(OSError):
        for entry in os.scandir(path.parent):
            pid = entry.name.removeprefix(prefix).removesuffix(".tmp")
            if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp") and pid.isdigit()):
                continue
            if entry.is_file(follow_symlinks=False) and not _alive(int(pid)):
                with suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or no such pid number): left alone
    return True


def replace_atomically(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``path`` anew (see ``atomic_file``) from ``chunks``."""
    with atomic_file(path) as f:
        for chunk in chunks:
            f.write(chunk)


def torn_tail(path: Path) -> int:
    """How many bytes follow the last newline of ``path`` (0 if none, or no file). Reads only."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
    except FileNotFoundError:
        return 0
    try:
        size = end = os.fstat(fd).st_size
        while end > 0:
            start = max(0, end - 65536)
            newline = os.pread(fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                return size - (start + newline + 1)
            end = start
        return size
    finally:
        os.close(fd)


def looks_like_record(path: Path, tail: int) -> bool:
    """Whether the last ``tail`` bytes of ``path`` could be the start of a record asyncbatch was writing."""
    with os.fdopen(os.open(path, os.O_RDONLY | NOFOLLOW), "rb") as f:
        f.seek(-tail, os.SEEK_END)
        head = f.read(len(RECORD_START))
    return head.startswith(RECORD_START) or RECORD_START.startswith(head)


def cut(path: Path, nbytes: int) -> None:
    """Remove the last ``nbytes`` of ``path`` (a torn line of ours), durably."""
    with os.fdopen(os.open(path, os.O_RDWR | NOFOLLOW), "r+b") as f:
        f.truncate(f.seek(0, os.SEEK_END) - nbytes)
        os.fsync(f.fileno())


def move_aside(paths: list[Path]) -> list[tuple[Path, Path]]:
    """Rename existing files (or the state directory) to ``<name>.<timestamp>.old``; never delete."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for path in paths:
        if path.exists() or path.is_symlink():
            target = path.with_name(f"{path.name}.{stamp}.old")
            n = 1
            while target.exists():
                n += 1
                target = path.with_name(f"{path.name}.{stamp}-{n}.old")
            os.replace(path, target)
            moved.append((path, target))
    return moved
