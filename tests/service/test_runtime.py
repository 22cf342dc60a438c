"""Start-up behaviour: execution providers, thread counts, readiness after warm-up, no torch import."""

from __future__ import annotations

import shutil
import subprocess
import sys

import httpx
import onnxruntime as ort
import pytest
from svc_helpers import REPO

from service.app import create_app
from service.inference.bundle import BundleError, ModelBundle
from service.inference.session import CPU, CUDA, OnnxModel, ProviderError, requested_providers


def test_auto_uses_cuda_only_when_this_onnxruntime_has_it():
    assert requested_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert requested_providers("auto", [CPU]) == [CPU]
    assert requested_providers("cpu", [CUDA, CPU]) == [CPU]
    assert requested_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]


def test_cuda_requested_without_cuda_is_a_clear_start_up_error():
    with pytest.raises(ProviderError, match="TRDETR_DEVICE=cuda.*TRDETR_DEVICE=cpu"):
        requested_providers("cuda", [CPU])


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has a CUDA onnxruntime")
@pytest.mark.anyio
async def test_app_refuses_to_start_on_cpu_when_cuda_was_requested(make_settings):
    app = create_app(make_settings(device="cuda"))
    with pytest.raises(ProviderError, match="CUDAExecutionProvider"):
        async with app.router.lifespan_context(app):
            pass


def test_cpu_session_uses_the_configured_thread_counts(small_bundle):
    model = OnnxModel(small_bundle / "model.onnx", device="cpu", intra_op_threads=1, inter_op_threads=1)
    options = model.session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert model.providers == [CPU]


@pytest.mark.anyio
async def test_not_ready_before_the_lifespan_has_loaded_and_warmed_the_model(make_settings):
    app = create_app(make_settings())  # lifespan not started: nothing loaded yet
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "starting"
        refused = await client.post("/v1/moments", json={"video_id": "v", "queries": ["q"]})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"


def test_the_service_never_imports_torch(small_bundle):
    code = (
        "import sys\n"
        "from service.app import create_app\n"
        "from service.settings import Settings\n"
        f"create_app(Settings(bundle_dir={str(small_bundle)!r}))\n"
        "import service.cli, service.inference.bundle, service.inference.text_encoder\n"
        "from service.inference.bundle import ModelBundle\n"
        f"ModelBundle({str(small_bundle)!r}, device='cpu')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('no torch')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no torch" in result.stdout


def test_fp16_without_an_fp16_graph_is_a_clear_start_up_error(small_bundle):
    with pytest.raises(BundleError, match="no fp16 graph"):
        ModelBundle(small_bundle, precision="fp16", device="cpu")


def test_a_damaged_bundle_is_refused_at_start_up(small_bundle, tmp_path):
    damaged = tmp_path / "bundle"
    shutil.copytree(small_bundle, damaged)
    with open(damaged / "model.onnx", "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="model.onnx: sha256"):
        ModelBundle(damaged, device="cpu")
