"""Writing files so that none is ever seen half-written under its final name.

Every artefact, figure, table and report is written to a temporary sibling (``NAME.partial-PID``)
and renamed onto its final name only once complete. A write the environment refuses (full disk,
quota, file size limit, read-only or unwritable folder) becomes an `EnvironmentFault`: one line
naming the file and the cause. A process killed mid-write leaves only a temporary file, which
`remove_leftovers` deletes at the next start.
"""
from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

PARTIAL = ".partial-"
# ours, and the temp file safetensors writes before its own rename (Rust's tempfile crate: ".tmp" + 6 characters)
_LEFTOVER = re.compile(re.escape(PARTIAL) + r"\d+$|^\.tmp[A-Za-z0-9]{6}$")
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EPERM", "EIO", "ENOTDIR", "EISDIR")
    if hasattr(errno, name)
)
_OS_ERROR_CODE = re.compile(r"os error (\d+)")  # how Rust (safetensors) reports an OS error


class EnvironmentFault(Exception):
    """The machine, not the input, refused a write: the message is one line naming the path and the cause."""

    @classmethod
    def from_os_error(cls, path: str | os.PathLike, err: OSError) -> "EnvironmentFault":
        cause = err.strerror or (os.strerror(err.errno) if err.errno else str(err))
        return cls(f"{path}: cannot write ({cause})")


def environment_os_error(err: BaseException) -> OSError | None:
    """The OSError behind an environment fault (an OSError, or safetensors' error wrapping one), else None."""
    from safetensors import SafetensorError

    if isinstance(err, OSError):
        return err if err.errno in ENVIRONMENT_ERRNOS else None
    found = _OS_ERROR_CODE.search(str(err)) if isinstance(err, SafetensorError) else None
    code = int(found.group(1)) if found else None
    return OSError(code, os.strerror(code)) if code in ENVIRONMENT_ERRNOS else None


def partial_path(final: str | os.PathLike) -> Path:
    """The temporary sibling a write of ``final`` goes to (`remove_leftovers` recognises it)."""
    final = Path(final)
    return final.with_name(f"{final.name}{PARTIAL}{os.getpid()}")


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed onto ``final``, on any error removed.
    An environment fault (see `environment_os_error`) is raised as an `EnvironmentFault` naming ``final``."""
    final = Path(final)
    tmp = partial_path(final)
    try:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file holds the folder's name
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None
        yield tmp
        os.replace(tmp, final)
    except BaseException as e:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        cause = environment_os_error(e)
        if cause is None:
            raise
        raise EnvironmentFault.from_os_error(final, cause) from e


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes_atomic(path, text.encode(encoding))


def is_leftover(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named as the temporary file of an unfinished write."""
    return _LEFTOVER.search(Path(path).name) is not None


def _writer_alive(path: Path) -> bool:
    """Whether the process named in a ``.partial-PID`` file is still running (e.g. a report being
    written next to the study): its file is not a leftover yet."""
    pid = path.name.rpartition(PARTIAL)[2]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed process left under ``folder`` (recursively); returns them."""
    removed = [path for path in Path(folder).rglob("*") if is_leftover(path) and path.is_file() and not _writer_alive(path)]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
