"""Exercises of notebook 04, climate super-resolution: bytes, ratios and errors on the sphere."""
from __future__ import annotations

from . import Wrong, answer, judge

answer("04.ratio", "the compression ratio of a truncated DCT", "74e1c01082849680", sig=4,
       hint="the ratio is the original bytes over the bytes stored: a 64 x 128 float64 field, against k x k "
            "float32 coefficients plus the codec's 16-byte header.",
       mistakes={"699dc997b6a504d0": "close: the stored bytes include the 16-byte header.",
                 "043354510ae783c2": "the coefficients are stored as float32, 4 bytes each."},
       about="a Compressed object's .ratio counts exactly these bytes.")

answer("04.ratio_weights", "the compression ratio counting the network's weights", "ff1ebd90af8760b9", sig=4,
       hint="whoever restores the fields needs the network too: its weights are stored bytes, added once to "
            "the bytes of all the compressed fields (float32: 4 bytes a weight).",
       mistakes={"068ea89f951289ed": "that is the ratio of the fields alone: add the weights' bytes.",
                 "ef25c7d0a6d676f1": "the weights are float32, 4 bytes each."},
       about="over a long run the weights' share shrinks; over a short one they can cost more than the data.")


@judge("04.weighted_l2", "the area-weighted relative L2 error",
       hint="on a latitude-longitude grid a row at latitude phi covers an area proportional to cos(phi): "
            "sqrt(sum(w * (approx - exact)**2) / sum(w * exact**2)) with w = cos(radians(lat)) per row.")
def _weighted_l2(fn):
    import numpy as np
    from hpcai.sim.compression import relative_errors
    rng = np.random.default_rng(0)
    lat = np.linspace(-87.5, 87.5, 36)
    exact = rng.standard_normal((36, 72)) + 2.0 * np.cos(np.radians(lat))[:, None]
    approx = exact + 0.1 * rng.standard_normal((36, 72)) * (1 + np.abs(lat) / 30)[:, None]  # worse near the poles
    got = float(fn(approx, exact, lat))
    want = relative_errors(approx, exact, np.cos(np.radians(lat))[:, None])[0]
    plain = relative_errors(approx, exact)[0]
    if np.isclose(got, plain, rtol=1e-6):
        raise Wrong(f"{got:.4g} is the unweighted error: the rows near the poles cover less area.")
    if np.isclose(got, want ** 2, rtol=1e-6):
        raise Wrong(f"{got:.4g} is the square of the error: take the square root.")
    if not np.isclose(got, want, rtol=1e-6):
        raise Wrong(f"{got:.4g} is not the area-weighted error of the test fields.")
    return f"{got:.4g} on a test field whose errors grow toward the poles (unweighted: {plain:.4g})."
