"""The shared numpy code must stay importable in the torch-free service image."""

import subprocess
import sys

import pytest

MODULES = [
    "trdetr_common.features",
    "trdetr_common.postprocess",
    "trdetr_common.spans",
    "trdetr_common.text",
    "training.evaluation",
    "training.eval_cli",
    "extraction",
    "extraction.cli",
]


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_neither_torch_nor_scipy_nor_sklearn(module):
    code = (
        f"import sys, {module}; "
        "heavy = sorted({'torch', 'scipy', 'sklearn'} & {m.split('.')[0] for m in sys.modules}); "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} pulled in {result.stdout.strip()}"
