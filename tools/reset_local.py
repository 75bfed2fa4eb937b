"""`make reset`: clear the local etcd's data (`make run`'s), and nothing else.

Refuses while that etcd is running: deleting the files under a live etcd would leave
it serving from a data directory that no longer exists.
"""

from __future__ import annotations

import fcntl
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / ".local" / "etcd-data"
LOG = ROOT / ".local" / "etcd.log"


def etcd_running(data_dir: Path) -> bool:
    """Whether an etcd holds this data directory: etcd keeps its WAL files locked
    (fcntl record locks, which conflict with lockf's)."""
    for wal in sorted((data_dir / "member" / "wal").glob("*.wal")):
        with open(wal, "rb+") as f:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.lockf(f, fcntl.LOCK_UN)
    return False


def main() -> int:
    if not DATA_DIR.exists():
        print(f"nothing to reset: {DATA_DIR.relative_to(ROOT)} does not exist")
        return 0
    if etcd_running(DATA_DIR):
        print("error: the local etcd is running (make run): stop it with Ctrl-C, then run make reset", file=sys.stderr)
        return 1
    shutil.rmtree(DATA_DIR)
    LOG.unlink(missing_ok=True)
    print(f"cleared {DATA_DIR.relative_to(ROOT)}: the next make run starts from an empty etcd with the defaults")
    return 0


if __name__ == "__main__":
    sys.exit(main())
