"""Modules and layers: traversal, state dicts on disk, and one training step against PyTorch in fp64."""
import numpy as np
import pytest

import hpcai
from hpcai import io, nn, ops


def small_cnn(rng=0, dtype=np.float32):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=rng, dtype=dtype), nn.BatchNorm2d(4, dtype=dtype),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3, rng=rng, dtype=dtype))


def test_traversal_names_and_counts():
    m = small_cnn()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "5.weight", "5.bias"]
    assert [n for n, _ in m.named_buffers()] == ["1.running_mean", "1.running_var"]
    assert m.num_parameters() == 4 * 9 + 4 + 4 + 4 + 64 * 3 + 3
    m.eval()
    assert not any(layer.training for layer in m.modules())


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_state_dict_round_trip_and_other_precision(tmp_path, suffix):
    m = small_cnn(rng=1)
    x = hpcai.tensor(np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32))
    m(x)  # updates the running statistics, so buffers differ from their initial values
    path = tmp_path / f"model{suffix}"
    m.save(path)
    other = small_cnn(rng=2, dtype=np.float64).load(path)  # an fp64 model takes fp32 weights
    for (name, a), (_, b) in zip(m.state_dict().items(), other.state_dict().items()):
        assert b.dtype == np.float64, name
        np.testing.assert_array_equal(a.astype(np.float64), b)


def test_corrupted_and_truncated_files_are_refused(tmp_path):
    m = small_cnn()
    path = tmp_path / "m.npz"
    m.save(path)
    raw = bytearray(path.read_bytes())
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(io.CorruptFileError, match="not a complete"):
        small_cnn().load(tmp_path / "cut.npz")
    data, _ = io.load_arrays(path)
    data["0.weight"][0, 0, 0, 0] += 1.0  # rewrite with a stale checksum: flip one value in place
    np.savez(tmp_path / "flip.npz", **data, **{io.CHECKSUM_KEY: np.array(io.checksum(m.state_dict())),
                                               io.META_KEY: np.array("{}")})
    with pytest.raises(io.CorruptFileError, match="checksum mismatch"):
        small_cnn().load(tmp_path / "flip.npz")


def test_mismatched_state_dict_is_refused():
    m = small_cnn()
    state = m.state_dict()
    state.pop("5.bias")
    with pytest.raises(KeyError, match=r"missing \['5.bias'\]"):
        m.load_state_dict(state)
    state = m.state_dict()
    state["5.weight"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"state\['5.weight'\]: shape \(2, 2\)"):
        m.load_state_dict(state)


def test_layer_input_errors():
    with pytest.raises(ValueError, match="Linear: x must end in 4 features"):
        nn.Linear(4, 2)(hpcai.tensor(np.ones((3, 5), np.float32)))
    with pytest.raises(ValueError, match="BatchNorm2d: x must be 4-d with 3 channels"):
        nn.BatchNorm2d(3)(hpcai.tensor(np.ones((2, 4, 5, 5), np.float32)))
    with pytest.raises(ValueError, match="activation: expected one of None, 'relu', got 'tanh'"):
        nn.BatchNorm2d(3, activation="tanh")
    with pytest.raises(ValueError, match="batch_norm: residual must have x's shape"):
        nn.BatchNorm2d(3, activation="relu")(hpcai.tensor(np.ones((2, 3, 5, 5), np.float32)),
                                              residual=hpcai.tensor(np.ones((2, 3, 5, 4), np.float32)))
    with pytest.raises(ValueError, match="groups: in_channels"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="kernel_size: expected a positive int"):
        nn.Conv2d(3, 4, 0)
    with pytest.raises(ValueError, match=r"p: expected a number in \[0, 1\)"):
        nn.Dropout(1.0)
    with pytest.raises(ValueError, match="init: expected one of"):
        nn.Linear(2, 2, init="lecun")


def test_initialisers_follow_their_variance():
    rng = np.random.default_rng(0)
    w = nn.init.he_normal((256, 128, 3, 3), rng)
    assert abs(w.std() - np.sqrt(2 / (128 * 9))) < 0.01 * np.sqrt(2 / (128 * 9)) * 10
    u = nn.init.glorot_uniform((300, 200), rng)
    assert abs(u.var() - 2 / 500) < 0.05 * 2 / 500
    np.testing.assert_array_equal(nn.init.he_uniform((4, 4), 7), nn.init.he_uniform((4, 4), 7))  # seeded


@pytest.mark.parametrize("layer", ["linear", "conv2d", "batchnorm2d", "conv_transpose2d", "layernorm"])
def test_one_sgd_step_matches_torch(layer):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    if layer == "linear":
        ours, ref, shape = nn.Linear(5, 3, rng=1, dtype=np.float64), torch.nn.Linear(5, 3), (4, 5)
    elif layer == "conv2d":
        ours = nn.Conv2d(2, 3, 3, stride=2, padding=1, rng=1, dtype=np.float64)
        ref, shape = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 2, 7, 7)
    elif layer == "conv_transpose2d":
        ours = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, rng=1, dtype=np.float64)
        ref, shape = torch.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1), (2, 2, 4, 4)
    elif layer == "batchnorm2d":
        ours, ref, shape = nn.BatchNorm2d(3, dtype=np.float64), torch.nn.BatchNorm2d(3), (4, 3, 5, 5)
        ours.weight.data[...] = rng.uniform(0.5, 1.5, 3)
    else:
        ours, ref, shape = nn.LayerNorm((3, 4), dtype=np.float64), torch.nn.LayerNorm((3, 4)), (2, 3, 4)
        ours.bias.data[...] = rng.standard_normal((3, 4))
    ref = ref.double()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()}, strict=False)
    x = rng.standard_normal(shape)
    out = ours(hpcai.tensor(x))
    target = rng.standard_normal(out.shape)
    ((out - target) ** 2).mean().backward()
    tout = ref(torch.from_numpy(x))
    ((tout - torch.from_numpy(target)) ** 2).mean().backward()
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    lr = 0.1
    for p in ours.parameters():
        p.data -= lr * p.grad
    with torch.no_grad():
        for p in ref.parameters():
            p -= lr * p.grad
    theirs = {k: v.numpy() for k, v in ref.state_dict().items()}
    for name, value in ours.state_dict().items():
        np.testing.assert_allclose(value, theirs[name], rtol=1e-8, atol=1e-10, err_msg=name)


def test_residual_block_shapes_and_circular_padding():
    block = nn.ResidualBlock(2, 4, padding_mode="circular", rng=0)
    x = hpcai.tensor(np.random.default_rng(0).standard_normal((2, 2, 6, 8)).astype(np.float32))
    y = block(x)
    assert y.shape == (2, 4, 6, 8) and y.dtype == np.float32
    ops.mean(y).backward()
    assert all(p.grad is not None for p in block.parameters())
    # circular padding makes the block commute with a periodic shift along longitude (the last axis)
    block.eval()
    shifted = block(hpcai.tensor(np.roll(x.numpy(), 3, axis=-1)))
    np.testing.assert_allclose(shifted.numpy(), np.roll(block(x).numpy(), 3, axis=-1), rtol=1e-5, atol=1e-6)
