"""Run the parity gates on a bundle's ONNX graphs, on every usable execution provider.

References: the torch model when it is at hand (export, ``verify --checkpoint``), the official
golden outputs when ``--fixtures`` is given, and the bundle's own fp32 graph as the reference of
its fp16 graph when there is no torch model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cases import Arrays, Case, InputSpec, fixture_cases, random_cases
from .onnx_export import TRDETR_INPUTS
from .parity import (
    OUTPUTS,
    GateResult,
    Runner,
    Thresholds,
    fp16_gate,
    fp32_gate,
    golden_runner,
    make_session,
    ort_runner,
    parity_providers,
)


@dataclass
class GateRun:
    """The gates that ran, the providers they ran on and what was skipped, with reasons."""

    gates: list[GateResult] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def torch_runner(model: nn.Module) -> Runner:
    """The torch model as a Runner: named float32 inputs -> the three served outputs.

    An audio model is called as the official code calls it: ``src_vid`` (video + TEF, ``v_feat_dim``
    columns) and ``src_aud`` (the rest) as separate tensors, so the gates also prove that the
    bundle's single-input layout (audio after the video's TEF) is what the official model reads.
    """
    config = getattr(model, "config", None)
    split = config.v_feat_dim if config is not None and config.a_feat_dim else None

    def run(inputs: Arrays) -> Arrays:
        txt, txt_mask, vid, vid_mask = (torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in TRDETR_INPUTS)
        with torch.inference_mode():
            if split is None:
                out = model(txt, txt_mask, vid, vid_mask)
            else:
                out = model(txt, txt_mask, vid[..., :split], vid_mask, src_aud=vid[..., split:])
        return {name: out[name].float().numpy() for name in OUTPUTS}

    return run


def memoize(runner: Runner) -> Runner:
    """Cache a runner's outputs per input dict (the same cases are fed to several gates)."""
    cache: dict[int, tuple[Arrays, Arrays]] = {}

    def run(inputs: Arrays) -> Arrays:
        key = id(inputs)
        if key not in cache:
            cache[key] = (inputs, runner(inputs))  # keep inputs alive so the id stays unique
        return cache[key][1]

    return run


def build_cases(
    spec: InputSpec, v_feat_dim: int, num_random_cases: int, fixtures_dir: str | Path | None, seed: int = 0
) -> tuple[list[Case], list[Case]]:
    """(random cases, fixture cases); fixture widths must match the model's."""
    randoms = random_cases(spec, num_random_cases, seed=seed)
    fixtures = fixture_cases(fixtures_dir) if fixtures_dir is not None else []
    for case in fixtures[:1]:
        widths = (case.inputs["src_vid"].shape[2], case.inputs["src_txt"].shape[2])
        if widths != (v_feat_dim, spec.text_dim):
            raise ValueError(
                f"fixtures in {fixtures_dir} have video/text widths {widths} but the model expects "
                f"{(v_feat_dim, spec.text_dim)}: pass the fixtures made for this checkpoint"
            )
    return randoms, fixtures


def run_gates(
    fp32_path: Path,
    fp16_path: Path | None,
    model: nn.Module | None,
    randoms: list[Case],
    fixtures: list[Case],
    thresholds: Thresholds,
    *,
    progress: bool = False,
) -> GateRun:
    """All applicable gates on every usable provider (CPU always; CUDA when ONNX Runtime offers it)."""
    providers, skipped = parity_providers()
    result = GateRun(skipped=list(skipped))
    reference = memoize(torch_runner(model)) if model is not None else None
    for provider in providers:
        session = make_session(str(fp32_path), provider, fp32=True)
        actual = session.get_providers()[0]
        if actual != provider:
            result.skipped.append(f"{provider} requested but ONNX Runtime ran on {actual}; its gates skipped")
            continue
        result.providers.append(actual)
        fp32 = memoize(ort_runner(session))
        result.gates += _fp32_gates(reference, fp32, randoms, fixtures, actual, thresholds, progress)
        if fp16_path is not None:
            fp16 = ort_runner(make_session(str(fp16_path), provider, fp32=False))
            base, label = (reference, "torch") if reference is not None else (fp32, "ORT fp32")
            gate = fp16_gate(
                f"fp16 ORT vs {label} ({actual})", base, fp16, randoms + fixtures,
                provider=actual, thresholds=thresholds, progress=progress,
            )
            result.gates.append(gate)
    if model is None:
        result.skipped.append("no torch model given: torch-vs-ORT fp32 gates skipped (pass the checkpoint)")
    if not fixtures:
        result.skipped.append("no fixtures given: comparison with the official golden outputs skipped")
    return result


def _fp32_gates(
    reference: Runner | None,
    fp32: Runner,
    randoms: list[Case],
    fixtures: list[Case],
    provider: str,
    thresholds: Thresholds,
    progress: bool,
) -> list[GateResult]:
    """torch-vs-ORT on every case, and ORT-vs-official-golden on the fixture cases."""
    gates = []
    if reference is not None:
        by_case: Callable[[Case], Arrays] = lambda case: reference(case.inputs)  # noqa: E731
        gates.append(fp32_gate(
            f"fp32 torch vs ORT ({provider})", by_case, fp32, randoms + fixtures,
            reference_label="torch", candidate_label="ORT fp32", provider=provider,
            thresholds=thresholds, progress=progress,
        ))
    if fixtures:
        gates.append(fp32_gate(
            f"fp32 official golden vs ORT ({provider})", golden_runner, fp32, fixtures,
            reference_label="official golden outputs", candidate_label="ORT fp32", provider=provider,
            thresholds=thresholds, progress=progress,
        ))
    return gates
