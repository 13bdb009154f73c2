"""One error for a file the project reads that is missing, unreadable, damaged or holds the wrong
content (`DamagedFileError`: the file, what is wrong with it, what to do), and the checks the
readers share, so that each reader states what it expects instead of letting a decoder's
traceback (gzip, pickle, zip, JSON) reach the user."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Iterable, Mapping


class DamagedFileError(ValueError):
    """A file the project reads is missing, unreadable, damaged or of the wrong content.

    `path`, `problem` and `fix` are kept apart (tests and callers read them); the message is
    "PATH: PROBLEM; FIX". A ValueError, as the project's other input errors are."""

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str = "") -> None:
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(f"{path}: {problem}" + (f"; {fix}" if fix else ""))

    def __reduce__(self):  # rebuilt from its parts (Ray sends errors between processes)
        return (type(self), (self.path, self.problem, self.fix))


class MissingFileError(DamagedFileError, FileNotFoundError):
    """The file does not exist (also a FileNotFoundError, which older callers catch)."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line (decoders' messages span several, or carry advice)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:limit]


def check_file(path: str | os.PathLike[str], fix: str) -> Path:
    """`path` as a Path once it exists, is no folder, is readable and (a regular file) is not
    empty; otherwise a `DamagedFileError` (a `MissingFileError` if it does
    not exist). A pipe passes (`--config <(...)`)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MissingFileError(path, "the file does not exist", fix) from None
    except OSError as exc:
        raise DamagedFileError(path, f"the file cannot be read ({exc.strerror or exc})", fix) from None
    if stat.S_ISDIR(st.st_mode):
        raise DamagedFileError(path, "is a folder where a file is expected", fix)
    if not os.access(path, os.R_OK):
        raise DamagedFileError(path, "the file cannot be read (permission denied)",
                               f"make it readable (chmod u+r {path}), or {fix}")
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise DamagedFileError(path, "the file is empty (0 bytes): damaged or cut short", fix)
    return path


def read_bytes(path: str | os.PathLike[str], fix: str) -> bytes:
    """The file's bytes after `check_file`; an OSError while reading is a `DamagedFileError`."""
    path = check_file(path, fix)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DamagedFileError(path, f"the file cannot be read ({exc.strerror or exc})", fix) from None


def read_text(path: str | os.PathLike[str], fix: str) -> str:
    """The file as UTF-8 text; bytes that are not UTF-8 (a binary or garbled file) are a
    `DamagedFileError` naming the first bad byte."""
    raw = read_bytes(path, fix)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedFileError(path, f"is not a text file (byte {exc.start} is not UTF-8): damaged, or "
                                     f"garbage bytes", fix) from None


def load_json(path: str | os.PathLike[str], fix: str) -> Any:
    """The JSON value in `path`; a file that is not valid JSON is a `DamagedFileError` with the
    line and column of the fault (a cut-short file fails at its end)."""
    text = read_text(path, fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DamagedFileError(path, f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}): "
                                     f"damaged or cut short", fix) from None


def require_mapping(path: str | os.PathLike[str], value: Any, keys: Iterable[str], what: str,
                    fix: str) -> Mapping[str, Any]:
    """`value` if it is a mapping holding every one of `keys`; else a `DamagedFileError` saying
    the file is not `what` (e.g. "a checkpoint this trainer wrote") and which keys are missing."""
    if not isinstance(value, Mapping):
        raise DamagedFileError(path, f"holds a {type(value).__name__}, not {what}", fix)
    missing = [k for k in keys if k not in value]
    if missing:
        raise DamagedFileError(path, f"lacks {', '.join(map(repr, missing))}: it is not {what}", fix)
    return value
