"""Whole modules gradient-checked end to end in fp64: every nn layer, and every application's network.

Layers are checked element by element against central differences (input and every parameter); the
applications' networks, with up to 10^5 parameters, along one random direction per parameter tensor, so
every layer of the network is checked on its own. A case list that misses a layer of ``hpcai.nn`` fails.
"""
import numpy as np
import pytest

import hpcai
from hpcai import Tensor, gradcheck, nn
from hpcai.autograd import GradcheckError
from hpcai.apps import APPS


def _case(layer, shape):
    return layer, shape


LAYERS = {
    "Linear": _case(lambda: nn.Linear(4, 3, rng=0), (2, 4)),
    "Conv2d": _case(lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, rng=0), (2, 2, 5, 5)),
    "ConvTranspose2d": _case(lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, rng=0), (1, 2, 3, 3)),
    "MaxPool2d": _case(lambda: nn.MaxPool2d(2), (2, 2, 4, 4)),
    "AvgPool2d": _case(lambda: nn.AvgPool2d(3, stride=2, padding=1), (2, 2, 5, 5)),
    "GlobalAvgPool2d": _case(lambda: nn.GlobalAvgPool2d(), (2, 3, 3, 3)),
    "BatchNorm1d": _case(lambda: nn.BatchNorm1d(3), (4, 3)),
    "BatchNorm2d": _case(lambda: nn.BatchNorm2d(2), (3, 2, 2, 2)),
    "LayerNorm": _case(lambda: nn.LayerNorm((3, 2)), (2, 3, 2)),
    "Dropout": _case(lambda: nn.Dropout(0.3, rng=0), (3, 4)),
    "Flatten": _case(lambda: nn.Flatten(), (2, 2, 3)),
    "Identity": _case(lambda: nn.Identity(), (2, 3)),
    "PixelShuffle": _case(lambda: nn.PixelShuffle(2), (1, 8, 2, 2)),
    "ReLU": _case(lambda: nn.ReLU(), (3, 4)),
    "LeakyReLU": _case(lambda: nn.LeakyReLU(0.1), (3, 4)),
    "Tanh": _case(lambda: nn.Tanh(), (3, 4)),
    "Sigmoid": _case(lambda: nn.Sigmoid(), (3, 4)),
    "GELU": _case(lambda: nn.GELU(), (3, 4)),
    "Softplus": _case(lambda: nn.Softplus(), (3, 4)),
    "ResidualBlock": _case(lambda: nn.ResidualBlock(2, 3, stride=2, padding_mode="circular", rng=0), (2, 2, 4, 4)),
    "ViewAverage": _case(lambda: nn.ViewAverage(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, rng=0), nn.BatchNorm2d(2),
                                                              nn.ReLU(), nn.GlobalAvgPool2d(), nn.Linear(2, 3, rng=1)),
                                                3), (2, 3, 4, 4)),
    "Sequential": _case(lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, rng=0), nn.BatchNorm2d(2), nn.ReLU(),
                                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3, rng=1)), (3, 1, 4, 4)),
}


def _inputs(shape, seed=0):
    """Values kept away from 0, so no finite difference straddles a ReLU kink or a max-pool tie."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape) + rng.uniform(0, 1e-3, shape)


def test_every_layer_has_a_case():
    layers = {name for name in nn.__all__ if isinstance(getattr(nn, name), type)
              and issubclass(getattr(nn, name), nn.Module) and name != "Module"}
    assert layers == set(LAYERS), f"layers without a gradient check: {sorted(layers - set(LAYERS))}"


def _checked(module, x, directional, eps=1e-6):
    """gradcheck of module(x) with respect to x and every parameter (the module reseeded per call)."""
    module = module.astype(np.float64)
    params = module.parameters()

    def fn(x, *_):
        if isinstance(module, nn.Dropout):
            module.rng = np.random.default_rng(0)  # the same mask at every evaluation
        return module(x)

    return gradcheck(fn, [Tensor(x, requires_grad=True), *params], directional=directional, eps=eps)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_gradients(name):
    make, shape = LAYERS[name]
    assert _checked(make(), _inputs(shape), directional=False)


@pytest.mark.parametrize("name", sorted(APPS))
def test_application_network_gradients(name):
    app = APPS[name]
    config = app.config()
    model = app.build_model(config)
    x = app.example_batch(config, 2, np.random.default_rng(0))
    n_params = sum(p.size for p in model.parameters())
    assert n_params > 0
    # a small step: the network has ~10^6 ReLU inputs, and a larger one would cross some of their kinks
    assert _checked(model, np.asarray(x, np.float64), directional=True, eps=1e-7)


def test_directional_check_catches_a_wrong_layer():
    # the climate network's residual line h = relu(h + b(relu(a(h)))) was where the engine erred (issue 11);
    # a gradient wrong in one element of one parameter must fail the directional check
    model = nn.Sequential(nn.Linear(3, 4, rng=0), nn.Tanh(), nn.Linear(4, 2, rng=1)).astype(np.float64)
    x = Tensor(_inputs((2, 3)), requires_grad=True)
    w = model[0].weight
    original = hpcai.autograd.engine.backward

    def corrupted(tensor, grad=None, retain_graph=False):
        original(tensor, grad, retain_graph)
        w.grad[0, 0] += 1e-3
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hpcai.autograd.tensor.engine, "backward", corrupted)
        with pytest.raises(GradcheckError, match="random direction"):
            gradcheck(lambda x, *_: model(x), [x, *model.parameters()], directional=True)
