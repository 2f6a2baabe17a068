"""How close an artifact is to its reference: error metrics, PSNR gates, token error rates."""

from __future__ import annotations

import numpy as np

from ..job import Artifact, Check, Job

MAX_TOKEN_ERROR_RATE = 0.1  # the transcript check's gate


def compare(reference: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """max/mean abs error, PSNR (argmaxtools' definition) and cosine similarity, all in float64."""
    reference = np.asarray(reference, dtype=np.float64).ravel()
    actual = np.asarray(actual, dtype=np.float64).ravel()
    if reference.shape != actual.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, artifact {actual.shape}")
    error = actual - reference
    rmse = float(np.sqrt(np.mean(error**2)))
    cosine = float(reference @ actual / (np.linalg.norm(reference) * np.linalg.norm(actual) + 1e-30))
    return {
        "max_abs_error": float(np.max(np.abs(error))),
        "mean_abs_error": float(np.mean(np.abs(error))),
        "psnr": float(20 * np.log10((np.max(np.abs(reference)) + 1e-5) / (rmse + 1e-10))),
        "cosine_similarity": cosine,
    }


def psnr_check(artifact: Artifact, metrics: dict, method: str, job: Job, what: str) -> Check:
    passed = metrics["psnr"] >= job.min_psnr
    message = f"PSNR {metrics['psnr']:.1f} dB vs gate {job.min_psnr:g} dB ({'pass' if passed else 'fail'}); {what}"
    return Check(artifact=artifact.filename, passed=passed, metrics=metrics, method=method, message=message)


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance between two token lists."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]
