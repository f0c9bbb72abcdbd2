"""A real Prometheus server for tests: scrape given targets every second, query over HTTP.

The binary is ``$PROMETHEUS_BIN`` or ``prometheus`` on ``PATH`` (``scripts/prometheus.sh``
installs Debian's package, and ``make test`` runs it first). Storage lives in a temporary
folder that is removed on :meth:`PrometheusServer.stop`.

>>> print(scrape_config(["127.0.0.1:8000"], interval="1s"))
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: streamrec
    scrape_interval: 1s
    scrape_timeout: 1s
    static_configs:
      - targets: ["127.0.0.1:8000"]
<BLANKLINE>

"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from streamrec.kafka_local import free_port

__all__ = ["PrometheusServer", "find_prometheus", "free_port", "scrape_config"]


def find_prometheus() -> str | None:
    """Path of the Prometheus server binary, or ``None`` when it is not installed."""
    explicit = os.environ.get("PROMETHEUS_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("prometheus")


def scrape_config(targets: Sequence[str], interval: str = "1s", job: str = "streamrec") -> str:
    """A minimal ``prometheus.yml`` scraping ``targets`` (``host:port``) every ``interval``."""
    quoted = ", ".join(json.dumps(t) for t in targets)
    return (
        "global:\n"
        f"  scrape_interval: {interval}\n"
        f"  evaluation_interval: {interval}\n"
        "scrape_configs:\n"
        f"  - job_name: {job}\n"
        f"    scrape_interval: {interval}\n"
        f"    scrape_timeout: {interval}\n"
        "    static_configs:\n"
        f"      - targets: [{quoted}]\n"
    )


class PrometheusServer:
    """One Prometheus process on a free port of 127.0.0.1, scraping ``targets``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, targets: Sequence[str], *, binary: str | None = None, interval: str = "1s") -> None:
        self.targets = list(targets)
        self.binary = binary or find_prometheus()
        self.interval = interval
        self.port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        if not self.binary:
            raise FileNotFoundError("no prometheus binary: run scripts/prometheus.sh or set PROMETHEUS_BIN")
        self._dir = Path(tempfile.mkdtemp(prefix="streamrec-prometheus-"))
        config = self._dir / "prometheus.yml"
        config.write_text(scrape_config(self.targets, self.interval))
        self.port = free_port()
        log = (self._dir / "prometheus.log").open("wb")
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self._dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"prometheus not ready after {timeout} s")
            time.sleep(0.2)

    def log(self) -> str:
        """What the server printed so far (warnings and errors)."""
        path = self._dir / "prometheus.log" if self._dir else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def _get(self, path: str, **params: str) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:  # 400 for a bad query: keep Prometheus's reason
            body = json.load(err)
        if body.get("status") != "success":
            raise ValueError(f"{params.get('query', path)!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        """Instant query: the result list (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
        data = self._get("/api/v1/query", query=promql)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict]:
        """Range query: ``[{"metric": {...}, "values": [[t, "v"], ...]}, ...]``."""
        data = self._get("/api/v1/query_range", query=promql, start=str(start), end=str(end), step=str(step))
        return data["result"]

    def values(self, promql: str) -> dict[tuple, float]:
        """Instant query as ``{sorted label pairs: value}``."""
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in self.query(promql)}

    def wait_for(
        self, promql: str, done: Callable[[dict[tuple, float]], bool], timeout: float = 60.0
    ) -> dict[tuple, float]:
        """Poll ``promql`` until ``done(values)`` holds; returns those values (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.values(promql)
            if done(got):
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"{promql!r} still {got} after {timeout} s")
            time.sleep(0.5)

    def targets_up(self) -> list[dict]:
        """The active scrape targets and their health."""
        return self._get("/api/v1/targets")["activeTargets"]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
