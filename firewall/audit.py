"""The audit log: one JSON line per rejection, enough to investigate it later.

The input itself is not stored (it may be personal data); its sha256 identifies it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path


class AuditLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", buffering=1)
        self._lock = threading.Lock()

    def write(self, **record) -> None:
        line = json.dumps({"time": time.time(), **record}, separators=(",", ":"))
        with self._lock:
            self._handle.write(line + "\n")

    def close(self) -> None:
        self._handle.close()
