"""The user cache folder and atomic (write-to-temporary, then rename) cache entries."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

COMPLETE_MARKER = ".complete"


def cache_root() -> Path:
    """``$DAVAE_CACHE``, else ``$XDG_CACHE_HOME/davae_ext``, else ``~/.cache/davae_ext``."""
    if os.environ.get("DAVAE_CACHE"):
        return Path(os.environ["DAVAE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "davae_ext"


def is_complete(path: Path) -> bool:
    return (Path(path) / COMPLETE_MARKER).exists()


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yields a temporary folder beside `final`; on success it gets the completion marker and is
    renamed to `final` (replacing an incomplete one). A killed process leaves only a temporary
    folder, which is never read."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
