"""Derivatives, Laplacian and PDE residuals against values computed by hand (CASES C01-C06)."""

import warnings

import pytest
import torch

from potentialflow.potentials import (
    PotentialNetwork,
    WavePDE,
    build_pde,
    compute_derivatives,
    get_activation,
    laplacian,
)
from potentialflow.potentials.activations import warn_if_piecewise_linear
from potentialflow.potentials.networks import Groups

DTYPES = [(torch.float32, 1e-5), (torch.float64, 1e-8)]


def batch(b, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, d, generator=g).to(dtype)
    t = torch.rand(b, 1, generator=g).to(dtype)
    return z, t, torch.zeros(b, dtype=torch.long)


def sum_squares(z, t, k):
    return (z**2).sum(-1, keepdim=True)


def product12(z, t, k):
    return z[:, :1] * z[:, 1:2]


def sum_sin(z, t, k):
    return torch.sin(z).sum(-1, keepdim=True)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_c01_laplacian_is_the_trace(dtype, tol):
    z, t, k = batch(4, 5, dtype)
    lap = laplacian(sum_squares, z, t, k, mode="exact")
    assert lap.shape == (4, 1)
    torch.testing.assert_close(lap, torch.full((4, 1), 10.0, dtype=dtype), atol=tol, rtol=0)
    # The gradient-of-summed-gradient mistake gives the row sums [1, 1, 0, 0, 0] here.
    torch.testing.assert_close(
        laplacian(product12, z, t, k, mode="exact"),
        torch.zeros(4, 1, dtype=dtype),
        atol=tol,
        rtol=0,
    )
    expected = -torch.sin(z).sum(-1, keepdim=True)
    torch.testing.assert_close(
        laplacian(sum_sin, z, t, k, mode="exact"), expected, atol=tol, rtol=0
    )


@pytest.mark.parametrize("fn,value", [(sum_squares, 10.0), (sum_sin, None)])
def test_c01_hutchinson_agrees_in_expectation(fn, value):
    z, t, k = batch(4, 5, torch.float64)
    g = torch.Generator().manual_seed(1)
    estimate = laplacian(fn, z, t, k, mode="hutchinson", num_probes=4000, generator=g)
    exact = laplacian(fn, z, t, k, mode="exact")
    assert torch.all((estimate - exact).abs() <= 0.02 * exact.abs().clamp(min=1.0))


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_c02_time_is_not_space(dtype, tol):
    z, t, k = batch(6, 3, dtype)
    wave = WavePDE(1, speed=1.0).to(dtype)

    def u(z, t, k):
        return z[:, :1] * z[:, 1:2] + t**2

    d = compute_derivatives(u, z, t, k, wave.needs, "exact")
    torch.testing.assert_close(wave.residual(d, k), torch.full((6, 1), 2.0, dtype=dtype))

    def travelling(z, t, k):
        return torch.sin(z[:, :1] - 2 * t)

    exact_wave = WavePDE(1, speed=2.0).to(dtype)
    d = compute_derivatives(travelling, z, t, k, exact_wave.needs, "exact")
    assert exact_wave.residual(d, k).abs().max() < 1e-5


def test_c03_smooth_activations_have_curvature():
    net = PotentialNetwork(latent_dim=6, num_potentials=3)
    z, t, _ = batch(16, 6, torch.float32)
    k = torch.arange(16) % 3
    lap = laplacian(net, z, t, k, mode="exact")
    assert lap.abs().min() > 0
    with pytest.raises(ValueError, match="'relu' is piecewise linear"):
        PotentialNetwork(latent_dim=6, num_potentials=3, activation="relu")
    with pytest.raises(ValueError, match="unknown activation 'swish2'"):
        get_activation("swish2")
    relu_potential = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU())
    with pytest.warns(UserWarning, match="second derivatives vanish"):
        warn_if_piecewise_linear(relu_potential)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_c04_constant_gradient(dtype, tol):
    z, t, k = batch(5, 4, dtype)

    def linear(z, t, k):
        return 3 * z[:, :1]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = compute_derivatives(linear, z, t, k, ("grad", "laplacian", "u_t", "u_tt"), "exact")
    zeros = torch.zeros(5, 1, dtype=dtype)
    for value in (d.laplacian, d.u_t, d.u_tt):
        torch.testing.assert_close(value, zeros, atol=tol, rtol=0)
    expected = torch.zeros(5, 4, dtype=dtype)
    expected[:, 0] = 3
    torch.testing.assert_close(d.grad, expected)
    hutchinson = laplacian(linear, z, t, k, mode="hutchinson")
    torch.testing.assert_close(hutchinson, zeros, atol=tol, rtol=0)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_c05_per_sample_time(dtype, tol):
    z, t, k = batch(8, 3, dtype)

    def u(z, t, k):
        return t**2

    d = compute_derivatives(u, z, t, k, ("u_t", "u_tt"))
    torch.testing.assert_close(d.u_tt, torch.full((8, 1), 2.0, dtype=dtype), atol=tol, rtol=0)
    torch.testing.assert_close(d.u_t, 2 * t, atol=tol, rtol=0)
    with pytest.raises(ValueError, match=r"t must be \(batch, 1\)"):
        compute_derivatives(u, z, t[:1], k, ("u_tt",))


def test_c05_residual_alone_equals_residual_in_batch():
    torch.manual_seed(0)
    net = PotentialNetwork(4, 3).double()
    wave = WavePDE(3).double()
    z, t, _ = batch(8, 4, torch.float64)
    k = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    full = wave.residual(compute_derivatives(net, z, t, k, wave.needs), k)
    for i in range(8):
        alone = wave.residual(
            compute_derivatives(net, z[i : i + 1], t[i : i + 1], k[i : i + 1], wave.needs),
            k[i : i + 1],
        )
        torch.testing.assert_close(alone, full[i : i + 1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("activation", ["tanh", "softplus", "silu", "sin"])
def test_c06_closed_form_derivatives_match_autograd(dtype, tol, activation):
    torch.manual_seed(0)
    net = PotentialNetwork(5, 3, hidden_dims=(16, 16), activation=activation).to(dtype)
    z, t, _ = batch(7, 5, dtype)
    k = torch.tensor([2, 0, 1, 1, 0, 2, 2])

    def plain(z, t, k):  # no jet or grad_z: the autograd path
        return net(z, t, k)

    need = ("grad", "laplacian", "u_t", "u_tt")
    fast = compute_derivatives(net, z, t, k, need, "exact")
    slow = compute_derivatives(plain, z, t, k, need, "exact")
    for name in need:
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name), atol=tol, rtol=tol)
    torch.testing.assert_close(net.grad_z(z, t, k), slow.grad, atol=tol, rtol=tol)


def test_exact_laplacian_equals_trace_of_autograd_hessian():
    torch.manual_seed(3)
    net = PotentialNetwork(6, 2, hidden_dims=(32, 32)).double()
    z, t, _ = batch(3, 6, torch.float64)
    k = torch.tensor([1, 0, 1])
    lap = laplacian(net, z, t, k, mode="exact")
    for i in range(3):
        hessian = torch.autograd.functional.hessian(
            lambda x, i=i: net(x[None], t[i : i + 1], k[i : i + 1]).sum(), z[i]
        )
        assert abs(float(torch.trace(hessian)) - float(lap[i])) < 1e-10


def test_hutchinson_on_the_network_is_unbiased():
    torch.manual_seed(4)
    net = PotentialNetwork(12, 2, hidden_dims=(32, 32)).double()
    z, t, _ = batch(4, 12, torch.float64)
    k = torch.tensor([0, 1, 0, 1])
    exact = laplacian(net, z, t, k, mode="exact")
    g = torch.Generator().manual_seed(0)
    estimate = laplacian(net, z, t, k, mode="hutchinson", num_probes=20000, generator=g)
    assert torch.all((estimate - exact).abs() <= 0.02 * exact.abs() + 1e-3)


@pytest.mark.parametrize("mode", ["exact", "hutchinson"])
def test_jet_over_several_chunks_matches_autograd(mode):
    # d = 40 spans two chunks of 32 unit directions; t rides along with the last chunk.
    torch.manual_seed(5)
    net = PotentialNetwork(40, 3, hidden_dims=(24, 16, 8), activation="silu").double()
    z, t, _ = batch(6, 40, torch.float64)
    k = torch.tensor([2, 2, 0, 1, 2, 0])
    g = torch.Generator().manual_seed(1)
    probes = (torch.randint(0, 2, (6, 40, 40), generator=g) * 2 - 1).double()
    directions = None if mode == "exact" else probes
    jet = net.jet(z, t, k, directions, time=True, chunk=32)
    slow = compute_derivatives(lambda z, t, k: net(z, t, k), z, t, k, laplacian_mode="exact")
    units = torch.eye(40, dtype=torch.float64).expand(6, 40, 40)
    vectors = units if directions is None else directions
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(zz, t, k).sum(), zz, create_graph=True)
    quad = torch.zeros(6, 1, dtype=torch.float64)
    for p in range(40):
        v = vectors[:, p]
        (hv,) = torch.autograd.grad((grad * v).sum(), zz, retain_graph=True)
        quad += (hv * v).sum(-1, keepdim=True)
    torch.testing.assert_close(jet.trace, quad, atol=1e-10, rtol=1e-10)
    first = torch.einsum("bd,bpd->bp", slow.grad, vectors)
    torch.testing.assert_close(jet.first[:, :40], first, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(jet.first[:, -1:], slow.u_t, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(jet.u_tt, slow.u_tt, atol=1e-10, rtol=1e-10)
    if mode == "exact":
        torch.testing.assert_close(jet.trace, slow.laplacian, atol=1e-10, rtol=1e-10)
    # Without first derivatives along z: the same trace and time derivatives, u_t alone.
    lean = net.jet(z, t, k, directions, time=True, chunk=32, first=False)
    assert lean.first.shape == (6, 1)
    torch.testing.assert_close(lean.first, jet.first[:, -1:], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lean.trace, jet.trace, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lean.u_tt, jet.u_tt, atol=1e-12, rtol=1e-12)


def test_jet_without_directions_gives_time_derivatives_only():
    torch.manual_seed(6)
    net = PotentialNetwork(3, 2, hidden_dims=(8,)).double()
    z, t, _ = batch(4, 3, torch.float64)
    k = torch.tensor([1, 0, 0, 1])
    jet = net.jet(z, t, k, torch.zeros(4, 0, 3, dtype=torch.float64), time=True)
    slow = compute_derivatives(lambda z, t, k: net(z, t, k), z, t, k, ("u_t", "u_tt"))
    assert jet.first.shape == (4, 1)
    torch.testing.assert_close(jet.trace, torch.zeros(4, 1, dtype=torch.float64))
    torch.testing.assert_close(jet.first, slow.u_t)
    torch.testing.assert_close(jet.u_tt, slow.u_tt)


def test_packed_gradient_equals_the_per_sample_gradient():
    torch.manual_seed(7)
    net = PotentialNetwork(5, 4).double()
    z, _, _ = batch(10, 5, torch.float64)
    k = torch.tensor([3, 3, 3, 0, 1, 3, 0, 1, 3, 3])  # potential 2 unused, 3 crowded
    groups = Groups(k, 4)
    time = torch.tensor(0.7, dtype=torch.float64)
    packed = groups.unpack(net.packed_grad_z(groups.pack(z), time))
    torch.testing.assert_close(packed, net.grad_z(z, time.expand(10, 1), k))


def test_a_network_without_hidden_layers_is_refused():
    with pytest.raises(ValueError, match="at least one hidden layer"):
        PotentialNetwork(3, 2, hidden_dims=())
    with pytest.raises(ValueError, match="hidden_dims\\[1\\] must be a positive integer"):
        PotentialNetwork(3, 2, hidden_dims=(8, 0))


def test_batched_potentials_match_one_at_a_time():
    torch.manual_seed(0)
    net = PotentialNetwork(4, 5)
    z, t, _ = batch(9, 4, torch.float32)
    k = torch.tensor([4, 4, 0, 3, 1, 4, 2, 0, 4])
    together = net(z, t, k)
    for i in range(9):
        torch.testing.assert_close(
            net(z[i : i + 1], t[i : i + 1], k[i : i + 1]), together[i : i + 1]
        )


def test_groups_pack_and_unpack_round_trip():
    k = torch.tensor([2, 0, 2, 2, 1])
    groups = Groups(k, 4)
    x = torch.arange(5.0).unsqueeze(-1)
    packed = groups.pack(x)
    assert packed.shape == (4, 3, 1)
    torch.testing.assert_close(groups.unpack(packed), x)
    with pytest.raises(ValueError, match=r"potential indices must be in \[0, 2\)"):
        Groups(k, 2)


def test_pde_registry():
    assert set(build_pde.__globals__["PDE_REGISTRY"]) == {
        "wave",
        "heat",
        "hamilton_jacobi",
        "none",
    }
    with pytest.raises(ValueError, match="unknown PDE 'poisson'"):
        build_pde("poisson", 3)
    z, t, k = batch(4, 2, torch.float64)

    def u(z, t, k):
        return t * z[:, :1] ** 2

    heat = build_pde("heat", 1, diffusivity=0.5)
    d = compute_derivatives(u, z, t, k, heat.needs)
    torch.testing.assert_close(heat.residual(d, k), z[:, :1] ** 2 - 0.5 * 2 * t)
    hj = build_pde("hamilton_jacobi", 1)
    d = compute_derivatives(u, z, t, k, hj.needs)
    torch.testing.assert_close(hj.residual(d, k), z[:, :1] ** 2 + 0.5 * (2 * t * z[:, :1]) ** 2)
    with pytest.raises(ValueError, match="wave speed must be positive"):
        build_pde("wave", 2, speed=-1.0)


@pytest.mark.parametrize("hidden,activation", [((16,), "tanh"), ((8, 12, 8), "softplus")])
def test_grad_z_once_differentiable_matches_autograd(hidden, activation):
    """grad_z(twice=False) has a hand-written backward: autograd's gradients, first order."""
    torch.manual_seed(3)
    net = PotentialNetwork(4, 3, hidden_dims=hidden, activation=activation).double()
    z = torch.randn(9, 4, dtype=torch.float64)
    t = torch.rand(9, 1, dtype=torch.float64)
    k = torch.tensor([0, 2, 2, 0, 2, 0, 0, 2, 2])  # potential 1 unused: padded rows
    cotangent = torch.randn(9, 4, dtype=torch.float64)
    results = []
    for twice in (True, False):
        net.zero_grad()
        zz = z.clone().requires_grad_(True)
        g = net.grad_z(zz, t, k, twice=twice)
        (g * cotangent).sum().backward()
        results.append((g.detach(), zz.grad, [p.grad for p in net.gradient_parameters()]))
    (g1, dz1, p1), (g2, dz2, p2) = results
    torch.testing.assert_close(g2, g1, atol=1e-13, rtol=1e-12)
    torch.testing.assert_close(dz2, dz1, atol=1e-13, rtol=1e-10)
    torch.testing.assert_close(p2, p1, atol=1e-13, rtol=1e-10)
    zz = z.clone().requires_grad_(True)
    (first,) = torch.autograd.grad(net.grad_z(zz, t, k, twice=False).sum(), zz, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(first.sum(), zz)
    # A time that asks for a gradient takes the differentiable path.
    tt = t.clone().requires_grad_(True)
    (dt,) = torch.autograd.grad(net.grad_z(z, tt, k, twice=False).sum(), tt)
    assert dt.abs().sum() > 0


def test_state_dicts_with_one_first_layer_matrix_still_load():
    """Older checkpoints hold the first layer as one matrix on [z, embed(t)]."""
    torch.manual_seed(0)
    net = PotentialNetwork(3, 2, hidden_dims=(8,))
    old = dict(net.state_dict())
    old["weights.0"] = torch.cat([old["weights.0"], old.pop("time_weight")], dim=1)
    z, t, k = torch.randn(4, 3), torch.rand(4, 1), torch.tensor([0, 1, 1, 0])
    expected = net(z, t, k)
    fresh = PotentialNetwork(3, 2, hidden_dims=(8,))
    wrapper = torch.nn.ModuleDict({"potentials": fresh})
    wrapper.load_state_dict({f"potentials.{key}": value for key, value in old.items()})
    torch.testing.assert_close(fresh(z, t, k), expected)
