"""Writing a benchmark's JSON: one shape for every script in ``bench/``.

Each file gets the run's date and the machine it ran on beside the script's own payload, so a
figure can always be traced to where and when it was measured.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

__all__ = ["write_results"]


def write_results(path: Path, payload: dict) -> None:
    """Write ``payload`` plus ``date`` and ``machine`` to ``path`` as JSON; say where."""
    body = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        **payload,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")
    print(f"wrote {path}")
