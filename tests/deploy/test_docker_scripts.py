"""The two helper scripts the images run: the GPU dependency swap and the HEALTHCHECK probe."""

from __future__ import annotations

import http.server
import socket
import threading
import tomllib
from collections.abc import Iterator

import pytest
from deploy_helpers import REPO, load_docker_script

gpu_requirements = load_docker_script("gpu_requirements")
healthcheck = load_docker_script("healthcheck")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_gpu_requirements_swap_onnxruntime_for_the_gpu_extra(pyproject: dict) -> None:
    requirements = gpu_requirements.gpu_requirements(pyproject)
    names = [gpu_requirements.requirement_name(req) for req in requirements]
    assert "onnxruntime" not in names
    assert "onnxruntime-gpu" in names
    assert any("[cuda,cudnn]" in req for req in requirements), "CUDA/cuDNN come from the NVIDIA wheels"
    core = [gpu_requirements.requirement_name(req) for req in pyproject["project"]["dependencies"]]
    assert sorted(set(core) - {"onnxruntime"}) == sorted(set(names) - {"onnxruntime-gpu"})
    assert "torch" not in names


def test_gpu_requirements_refuse_a_pyproject_without_the_gpu_extra(pyproject: dict) -> None:
    broken = {"project": {**pyproject["project"], "optional-dependencies": {}}}
    with pytest.raises(ValueError, match="no \\[gpu\\] extra"):
        gpu_requirements.gpu_requirements(broken)


@pytest.mark.parametrize(
    ("requirement", "name"),
    [("onnxruntime>=1.20", "onnxruntime"), ("onnxruntime-gpu[cuda,cudnn]>=1.23", "onnxruntime-gpu"),
     ("Prometheus_Client>=0.20", "prometheus-client"), ("uvicorn[standard]", "uvicorn")],
)
def test_requirement_names_are_normalised(requirement: str, name: str) -> None:
    assert gpu_requirements.requirement_name(requirement) == name


def test_install_check_rejects_an_environment_with_the_cpu_onnxruntime() -> None:
    """This test environment has the CPU build: exactly what the GPU image's build must refuse."""
    problems = gpu_requirements.installed_onnxruntime_problems()
    assert any("onnxruntime is installed and shadows the GPU build" in p for p in problems)


def test_install_check_names_cuda_libraries_the_loader_cannot_find() -> None:
    problems = gpu_requirements.unloadable_cuda_libraries(("libtrdetr-no-such-library.so.1",))
    assert len(problems) == 1 and "LD_LIBRARY_PATH" in problems[0]


class _Handler(http.server.BaseHTTPRequestHandler):
    """/healthz answers 200, /readyz 503 (a warming-up service)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_healthcheck_passes_on_2xx_and_fails_otherwise(local_server: int) -> None:
    assert healthcheck.probe("/healthz", local_server)
    assert not healthcheck.probe("/readyz", local_server)


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    assert not healthcheck.probe("/healthz", free_port, timeout_s=0.5)


def test_healthcheck_reads_the_port_from_trdetr_port(local_server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRDETR_PORT", str(local_server))
    assert healthcheck.main(["healthcheck.py", "/healthz"]) == 0
    assert healthcheck.main(["healthcheck.py", "/readyz"]) == 1
