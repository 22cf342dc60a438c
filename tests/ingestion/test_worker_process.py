"""The worker process: it never imports torch, and refuses to start without a Redis it can share."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ingest_helpers import BIN, DEFAULT_BUNDLE, REPO, clean_env

pytestmark = pytest.mark.slow  # each starts a Python process that loads the service and the encoders


def test_workers_never_import_torch():
    code = (
        "import sys\n"
        "import ingestion.cli, ingestion.worker, ingestion.wiring, service.ingest, service.routers.ingest\n"
        "from service.settings import Settings\n"
        f"ingestion.wiring.make_extractor(Settings(bundle_dir={str(DEFAULT_BUNDLE)!r}, device='cpu'))\n"
        "heavy = sorted({'torch', 'torchvision', 'scipy'} & {m.split('.')[0] for m in sys.modules})\n"
        "assert not heavy, heavy\n"
        "print('no torch')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no torch" in result.stdout


def test_a_worker_without_a_shared_redis_says_what_to_set():
    result = subprocess.run([str(BIN / "trdetr-worker")], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr and "embedded" in result.stderr
