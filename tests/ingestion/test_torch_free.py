"""Workers never import torch: the worker CLI, the worker loop and the extractor they load."""

from __future__ import annotations

import subprocess
import sys

from ingest_helpers import DEFAULT_BUNDLE, REPO


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
