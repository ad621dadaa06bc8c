"""Exercises of notebook 01, tensors, autodiff and reduced precision."""
from __future__ import annotations

from . import Wrong, answer, judge

answer("01.fp16_eps", "fp16's machine epsilon", "11d4518ef9cd538f", sig=4,
       hint="eps is the gap between 1 and the next larger number: with p significand bits (p = 11 for fp16, "
            "the leading 1 included) it is 2**(1 - p).",
       mistakes={"856868338f67781a": "that is the unit roundoff u = eps / 2, the largest relative rounding "
                                     "error; eps is the whole gap from 1 to the next number.",
                 "e003d84d988a7c38": "that is bf16's epsilon (p = 8); fp16 has p = 11.",
                 "8ec6cde6e9b96f80": "that is fp32's epsilon (p = 24); fp16 has p = 11."},
       about="fp16 resolves about 3 decimal digits near 1.")

answer("01.bf16_ties", "what bf16 rounds 1 + 2**-9 and 1 + 3 * 2**-8 to", "f2ee3cc2585d5164", sig=8,
       hint="bf16 has p = 8, so near 1 its values are 2**-7 apart. A value less than half a gap from a "
            "neighbour goes to it; one exactly half way goes to the neighbour whose last bit is even.",
       mistakes={"1f8e101e8db69c7e": "the first is right; 1 + 3 * 2**-8 lies exactly half way between "
                                     "1 + 2**-7 and 1 + 2**-6: a tie goes to the even neighbour.",
                 "62bf0769ce82402c": "those are the inputs themselves: bf16 cannot hold either of them."},
       about="round to nearest, ties to even, as every IEEE format does.")

answer("01.matmul_shape", "the shape of a batched matrix product", "09ed2559b9587d45",
       hint="the last two axes multiply as matrices, (3, 4) @ (4, 2); the axes before them are batch axes "
            "and broadcast as in elementwise operations, aligned from the right.",
       mistakes={"d151dbbf10904802": "batch axes are aligned from the right and broadcast, not stacked: "
                                     "(8, 1) and (5,) give (8, 5).",
                 "d5c5de1a840fe90d": "the batch axes broadcast aligned from the right: (8, 1) with (5,) "
                                     "is (8, 5), in that order."},
       about="batch axes broadcast, the last two multiply.")


@judge("01.sin_backward", "the backward pass of sin",
       hint="backward receives gy, the gradient of the loss with respect to sin(a), and returns the gradient "
            "with respect to a: gy times the derivative of sin at a, which is cos(a).")
def _sin_backward(cls):
    import numpy as np
    from hpcai import tensor
    from hpcai.autograd import Function, GradcheckError, gradcheck
    if not (isinstance(cls, type) and issubclass(cls, Function)):
        raise Wrong(f"expected a Function subclass (class Sin(Function): ...), got {type(cls).__name__}")
    a = tensor(np.random.default_rng(0).standard_normal(6), requires_grad=True)
    if not np.allclose(cls.apply(a).data, np.sin(a.data)):
        raise Wrong("forward should return sin(a).")
    try:
        gradcheck(cls.apply, [a])
    except GradcheckError as e:
        raise Wrong("gradcheck: " + (str(e).splitlines() or [""])[0]) from None
    return "gradcheck agrees with your backward to finite differences."
