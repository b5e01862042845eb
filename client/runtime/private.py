"""Private files and directories of a long-running program, checked against a local user.

* :func:`private_umask` is the first thing ``tlog serve``, ``tlog scim-proxy`` and
  ``tlog-witness serve`` do: every file they make from then on (the LMDB store, the SQLite
  outbox and its WAL, the witness's state, lock and journal files) is 0600 and every
  directory 0700, whatever umask the process was started with. LMDB and SQLite create
  their files 0644 less the umask: under ``umask 000`` the store was world-readable.
* :func:`read_private_file` reads a secret (a signing or master key) and refuses one that
  another local user could have chosen or could read: a symbolic link (replaced by one
  pointing at another file), not a regular file, owned by another user, accessible by group
  or others, or with more than one name (a hard link elsewhere keeps the key readable, or
  replaceable, from a directory the data directory's mode does not protect).
* :func:`check_private_dir` refuses a data directory owned by another user or writable by
  group or others (whoever can write there can swap the key or the store), and makes one
  only readable by them 0700, with a warning.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["PrivateFileError", "check_private_dir", "private_umask", "read_private_file"]

log = logging.getLogger("tlog.private")

PRIVATE_UMASK = 0o077


class PrivateFileError(PermissionError):
    """A secret file or private directory that another local user could have chosen, read
    or changed."""


def private_umask() -> int:
    """Set the process's umask so that what it creates is its user's alone; the old one."""
    return os.umask(PRIVATE_UMASK)


def read_private_file(path: Path, what: str) -> bytes:
    """The bytes of the secret file at ``path`` (``what`` names it in an error), opened
    without following a symbolic link and checked on the open file (no race between the
    check and the read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        if os.path.islink(path):
            raise PrivateFileError(
                f"{what} {path} is a symbolic link: refused (a secret file must be the "
                "file itself, not a link another user could have planted)"
            ) from None
        raise exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PrivateFileError(f"{what} {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise PrivateFileError(
                f"{what} {path} is owned by uid {st.st_uid}, not by this process's user "
                f"(uid {os.geteuid()}): refused"
            )
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PrivateFileError(
                f"{what} {path} is accessible by group or others "
                f"(mode {st.st_mode & 0o777:o}); chmod 600 it"
            )
        if st.st_nlink != 1:
            raise PrivateFileError(
                f"{what} {path} has {st.st_nlink} names (a hard link elsewhere): refused; "
                "remove the other names (find / -samefile) or copy the key to a new file"
            )
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_private_dir(path: Path, what: str) -> None:
    """Refuse the directory ``path`` if another user owns it or may write in it; make it
    0700 (warning) if others may only read or enter it."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        st = os.stat(path)  # a data directory given as a link is the operator's choice
    if not stat.S_ISDIR(st.st_mode):
        raise PrivateFileError(f"{what} {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise PrivateFileError(
            f"{what} {path} is owned by uid {st.st_uid}, not by this process's user "
            f"(uid {os.geteuid()}): refused (its owner could replace the key or the store)"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PrivateFileError(
            f"{what} {path} is writable by group or others (mode {st.st_mode & 0o777:o}): "
            "refused (they could replace the key or the store); chmod 700 it"
        )
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "%s %s was readable by group or others (mode %o): made 0700",
            what,
            path,
            st.st_mode & 0o777,
        )
        os.chmod(path, 0o700)
