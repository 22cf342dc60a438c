"""A real 3-master Redis Cluster of ``redis-server`` processes on loopback ports, for tests (always stopped)."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

SLOTS = 16384


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Ports whose cluster bus port (port + 10000) is free too and below 65536.

    Ephemeral ports (up to 60999) would put the bus port past 65535, and redis-server then refuses to start.
    """
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, 30000)
        if port not in ports and _port_free(port) and _port_free(port + 10000):
            ports.append(port)
    return ports


def redis_server_binary() -> str | None:
    """``redis-server`` 7+ on PATH or at /usr/bin (cluster slots ranges need 7.0), else None."""
    return shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)


class RedisCluster:
    """Three masters, no replicas: slots split in three ranges, nodes introduced with CLUSTER MEET."""

    def __init__(self, data_dir: Path, binary: str) -> None:
        self.data_dir = data_dir
        self.binary = binary
        self.ports = _free_ports(3)
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        try:
            for port in self.ports:
                node_dir = self.data_dir / str(port)
                node_dir.mkdir(parents=True, exist_ok=True)
                self.processes.append(subprocess.Popen(
                    [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-config-file", f"nodes-{port}.conf", "--save", "", "--appendonly", "no",
                     "--dir", str(node_dir)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            nodes = [redis.Redis(port=port, socket_timeout=2) for port in self.ports]
            self._wait(lambda: all(node.ping() for node in nodes), "the nodes did not start")
            step = SLOTS // 3
            for i, node in enumerate(nodes):
                last = SLOTS - 1 if i == 2 else (i + 1) * step - 1
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", i * step, last)
            for port in self.ports[1:]:
                nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
            self._wait(lambda: all(b"cluster_state:ok" in node.execute_command("CLUSTER", "INFO")
                                   for node in nodes), "the cluster did not reach cluster_state:ok")
            for node in nodes:
                node.close()
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _wait(ready, message: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(message)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []
