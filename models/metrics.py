"""Reconstruction metrics of the paper (MSE, MAE, R2), plus SNR, on [-1, 1] samples."""
import numpy as np


def reconstruction_metrics(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Metrics of reconstruction `y` against original `x` (both `[T]`, x10 undone).

    R2 is 1 - SS_res / SS_tot (the coefficient of determination, as sklearn's
    r2_score); SNR is 10 log10(sum x^2 / sum (x - y)^2) in dB.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    err = x - y
    ss_res = float(np.sum(err ** 2))
    ss_tot = float(np.sum((x - x.mean()) ** 2))
    energy = float(np.sum(x ** 2))
    return {
        "mse": ss_res / len(x),
        "mae": float(np.mean(np.abs(err))),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "snr_db": 10.0 * np.log10(energy / ss_res) if ss_res > 0 else float("inf"),
    }
