"""Where runs live: one stable runs folder, whatever the current directory, and the folders used before.

The runs folder is ``--runs-dir``, else ``$KDBENCH_RUNS_DIR``, else ``<kdbench home>/runs``, where the
kdbench home is ``$KDBENCH_HOME``, else ``$XDG_DATA_HOME/kdbench``, else ``~/.local/share/kdbench``
(the XDG base-directory convention). Every runs folder a run is written to is remembered in
``<kdbench home>/runs-dirs.txt``, so that a run about to start from scratch can say that a finished run
with the same hash exists in another folder (a different ``--runs-dir``, or the ``./runs`` of an
older kdbench that wrote into the current directory).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from kdbench.results import read_result

__all__ = [
    "HOME_ENV",
    "RUNS_DIR_ENV",
    "default_runs_dir",
    "find_finished_elsewhere",
    "kdbench_home",
    "known_runs_dirs",
    "remember_runs_dir",
    "runs_dir_origin",
]

#: The folder holding kdbench's own state (the default runs folder and the list of runs folders used).
HOME_ENV = "KDBENCH_HOME"
#: The runs folder, when --runs-dir is not given.
RUNS_DIR_ENV = "KDBENCH_RUNS_DIR"
_KNOWN_FILE = "runs-dirs.txt"


def kdbench_home() -> Path:
    """``$KDBENCH_HOME``, else ``$XDG_DATA_HOME/kdbench``, else ``~/.local/share/kdbench``."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "kdbench"


def default_runs_dir(explicit: Path | None = None) -> Path:
    """``explicit`` (``--runs-dir``), else ``$KDBENCH_RUNS_DIR``, else ``<kdbench home>/runs``."""
    if explicit is not None:
        return explicit
    env = os.environ.get(RUNS_DIR_ENV)
    return Path(env).expanduser() if env else kdbench_home() / "runs"


def runs_dir_origin(explicit: Path | None = None) -> str:
    """Why `default_runs_dir` chose what it chose, for the line printed before a run."""
    if explicit is not None:
        return "--runs-dir"
    if os.environ.get(RUNS_DIR_ENV):
        return f"${RUNS_DIR_ENV}"
    return f"default; set ${RUNS_DIR_ENV} or --runs-dir to change"


def remember_runs_dir(path: Path) -> None:
    """Add ``path`` to the list of runs folders used (best effort: a read-only home changes nothing)."""
    target = str(path.expanduser().resolve())
    known = kdbench_home() / _KNOWN_FILE
    try:
        lines = known.read_text().splitlines() if known.is_file() else []
        if target in lines:
            return
        known.parent.mkdir(parents=True, exist_ok=True)
        with open(known, "a") as fh:
            fh.write(target + "\n")
    except OSError:
        pass


def known_runs_dirs() -> list[Path]:
    """The runs folders kdbench knows of: the current default, ``./runs``, and every folder used before."""
    candidates = [default_runs_dir(), Path("runs")]
    known = kdbench_home() / _KNOWN_FILE
    with contextlib.suppress(OSError):
        candidates += [Path(line) for line in known.read_text().splitlines() if line.strip()]
    seen: set[Path] = set()
    out: list[Path] = []
    for c in candidates:
        resolved = c.expanduser().resolve()
        if resolved not in seen and resolved.is_dir():
            seen.add(resolved)
            out.append(resolved)
    return out


def find_finished_elsewhere(name: str, recipe_hash: str, here: Path) -> Path | None:
    """A finished run folder ``<known runs dir>/<name>/<hash10>`` of the same recipe hash, other than ``here``."""
    here_resolved = here.expanduser().resolve()
    for root in known_runs_dirs():
        folder = root / name / recipe_hash[:10]
        if folder.resolve() == here_resolved:
            continue
        result = read_result(folder / "result.json")
        if result is not None and result.recipe_hash == recipe_hash and (folder / "model.pt").is_file():
            return folder
    return None
