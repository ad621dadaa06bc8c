"""Exercises of notebook 02, training: a momentum update, and the loss scale fp16 needs."""
from __future__ import annotations

from . import Wrong, answer, judge


@judge("02.momentum", "an SGD-with-momentum update",
       hint="keep a velocity v: v = beta * v + g, then w = w - lr * v (PyTorch's form). With beta = 0 it is "
            "plain SGD; the velocity is what carries the steps along a long, shallow valley.")
def _momentum(step):
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 5)) * np.array([3.0, 1.0, 0.5, 0.2, 0.1])  # an ill-conditioned least squares
    b = a @ rng.standard_normal(5)
    loss = lambda w: 0.5 * float(np.mean((a @ w - b) ** 2))  # noqa: E731
    grad = lambda w: a.T @ (a @ w - b) / len(b)  # noqa: E731
    lr, beta = 0.05, 0.9
    w, v = np.zeros(5), np.zeros(5)
    ref_w, ref_v = np.zeros(5), np.zeros(5)
    sgd_w = np.zeros(5)
    for _ in range(60):
        g = grad(w)
        out = step(w.copy(), g.copy(), v.copy(), lr, beta)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise Wrong(f"momentum_step should return (w, v), the new weights and velocity; got {type(out).__name__}")
        w, v = (np.asarray(x, dtype=float) for x in out)
        if w.shape != (5,) or v.shape != (5,):
            raise Wrong(f"w and v keep the weights' shape (5,); got {w.shape} and {v.shape}")
        ref_v = beta * ref_v + grad(ref_w)
        ref_w = ref_w - lr * ref_v
        sgd_w = sgd_w - lr * grad(sgd_w)
    start, end = loss(np.zeros(5)), loss(w)
    if not np.isfinite(end) or end >= start:
        raise Wrong(f"the loss went from {start:.3g} to {end:.3g} in 60 steps: it should go down.")
    if np.allclose(w, sgd_w, rtol=1e-9, atol=1e-12):
        raise Wrong("that is plain SGD: the loss went down, but the velocity v is not used.")
    if not np.allclose(w, ref_w, rtol=1e-6, atol=1e-9):
        raise Wrong(f"the loss went down ({start:.3g} to {end:.3g}), but not along momentum's path.")
    return (f"the loss went from {start:.3g} to {end:.3g} in 60 steps "
            f"(plain SGD at the same rate: {loss(sgd_w):.3g}).")


answer("02.loss_scale", "the smallest power-of-two loss scale that keeps a gradient of 2**-30 in fp16",
       "788f6a9558ccecbc",
       hint="fp16's smallest positive (subnormal) number is 2**-24; below half of it a value rounds to 0, and "
            "exactly half of it is a tie that goes to the even neighbour, 0.",
       mistakes={"d66f22c84de3e2ef": "then the scaled gradient is 2**-25, exactly half the smallest subnormal: "
                                     "a tie, and ties go to the even neighbour, which is 0.",
                 "738706298ea8ffc7": "that lifts it into fp16's normal range (2**-14 and up), which keeps all "
                                     "its bits; the question asks for the smallest scale at which it is not 0."},
       about="the scaled gradient is fp16's smallest subnormal; a larger scale keeps more of its bits.")
