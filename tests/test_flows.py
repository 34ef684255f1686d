"""Flows through torchdiffeq against exact solutions (CASES C07-C13)."""

import math

import pytest
import torch

from potentialflow.flows import FlowConfig, image_velocity, integrate, variation_loss
from potentialflow.potentials import PotentialNetwork

ONE = torch.zeros(1, dtype=torch.long)


def half_square(z, t, k):
    return 0.5 * (z**2).sum(-1, keepdim=True)


def flow_end(u, z0, sign, **config):
    s = torch.full((z0.shape[0], 1), float(sign), dtype=z0.dtype)
    k = torch.zeros(z0.shape[0], dtype=torch.long)
    return integrate(u, z0, k, s, FlowConfig(**config))[-1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c07_euler_uses_the_given_step(dtype):
    z1 = flow_end(half_square, torch.ones(1, 1, dtype=dtype), -1, num_points=2, step_size=0.01)
    assert abs(float(z1) - 0.99**100) < 1e-6
    assert abs(float(z1) - 0.366032) < 1e-6
    # Without a step size the spacing of the output times is used, never one big step.
    coarse = flow_end(half_square, torch.ones(1, 1, dtype=dtype), -1, num_points=11)
    assert abs(float(coarse) - 0.9**10) < 1e-6


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_c08_step_that_does_not_divide_the_interval(solver):
    def linear(z, t, k):
        return z.sum(-1, keepdim=True)

    z1 = flow_end(linear, torch.zeros(1, 1), +1, num_points=2, step_size=0.3, solver=solver)
    assert abs(float(z1) - 1.0) < 1e-6


def test_c09_flow_down_a_linear_potential_reaches_parameters():
    a = torch.nn.Parameter(torch.tensor([1.0, 0.0]))

    def linear(z, t, k):
        return (z * a).sum(-1, keepdim=True)

    path = integrate(linear, torch.tensor([[1.0, 0.0]]), ONE, torch.tensor([[-1.0]]))
    assert path.shape[0] > 1
    torch.testing.assert_close(path[-1], torch.zeros(1, 2), atol=1e-6, rtol=0)
    path[-1].sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="a single output time is not a flow"):
        FlowConfig(num_points=1)


@pytest.mark.parametrize("solver,tol", [("rk4", 1e-5), ("dopri5", 1e-5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c10_direction_applied_once(solver, tol, dtype):
    z0 = torch.tensor([[1.0, -2.0]], dtype=dtype)
    down = flow_end(half_square, z0, -1, num_points=2, solver=solver, step_size=0.01)
    up = flow_end(half_square, z0, +1, num_points=2, solver=solver, step_size=0.01)
    e = math.e
    torch.testing.assert_close(
        down, torch.tensor([[1 / e, -2 / e]], dtype=dtype), atol=tol, rtol=0
    )
    torch.testing.assert_close(
        up, torch.tensor([[e, -2 * e]], dtype=dtype), atol=tol * 10, rtol=tol
    )


def test_c10_euler_direction_per_sample():
    z0 = torch.tensor([[1.0, -2.0], [1.0, -2.0]], dtype=torch.float64)
    s = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    k = torch.zeros(2, dtype=torch.long)
    path = integrate(half_square, z0, k, s, FlowConfig(num_points=2, step_size=0.5))
    torch.testing.assert_close(path[-1], torch.tensor([[0.25, -0.5], [2.25, -4.5]]).double())


def test_c11_higher_order_autodiff_through_the_flow():
    scale = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

    def u(z, t, k):
        return scale * (z**2).sum(-1, keepdim=True)

    def end(z0):
        return flow_end(u, z0, -1, num_points=2, solver="rk4", step_size=0.01)

    z0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    v = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    _, jvp = torch.autograd.functional.jvp(end, z0, v, create_graph=True)
    torch.testing.assert_close(
        jvp, torch.tensor([[math.exp(-1), 0.0]]).double(), atol=1e-8, rtol=0
    )
    (grad,) = torch.autograd.grad(jvp.sum(), scale)
    # d/da exp(-2 a) at a = 1/2 is -2 exp(-1).
    assert abs(float(grad) + 2 * math.exp(-1)) < 1e-6


def test_c12_shift_applied_once():
    a = torch.tensor([1.0, 2.0])

    def constant_gradient(z, t, k):
        return (z * a).sum(-1, keepdim=True)

    z0 = torch.tensor([[0.3, -0.7]])
    z1 = flow_end(constant_gradient, z0, -1, t_end=0.5, num_points=2)
    torch.testing.assert_close(z1 - z0, torch.tensor([[-0.5, -1.0]]))


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_c13_dtype_follows_the_codes(solver):
    net = PotentialNetwork(3, 2)
    z0 = torch.randn(4, 3)
    path = integrate(
        net, z0, torch.tensor([0, 1, 0, 1]), torch.ones(4, 1), FlowConfig(solver=solver)
    )
    assert path.dtype == torch.float32
    times = FlowConfig().times(torch.zeros(1, dtype=torch.float64))
    assert times.dtype == torch.float64


def test_flow_gradcheck_float64():
    torch.manual_seed(0)
    net = PotentialNetwork(3, 2, hidden_dims=(8,)).double()
    k = torch.tensor([0, 1])
    s = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    z0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    config = FlowConfig(num_points=3, solver="rk4")
    assert torch.autograd.gradcheck(lambda z: integrate(net, z, k, s, config)[-1], (z0,))


def test_flow_with_the_adjoint_matches_direct_gradients():
    torch.manual_seed(0)
    net = PotentialNetwork(3, 2, hidden_dims=(8,)).double()
    z0 = torch.randn(4, 3, dtype=torch.float64)
    k, s = torch.tensor([0, 1, 0, 1]), torch.ones(4, 1, dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        net.zero_grad()
        config = FlowConfig(solver="rk4", step_size=0.01, adjoint=adjoint)
        path = integrate(net, z0, k, s, config)
        path[-1].pow(2).sum().backward()
        grads.append(net.weights[0].grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-8, rtol=1e-6)


def test_flow_under_no_grad_and_refused_in_inference_mode():
    net = PotentialNetwork(3, 2)
    z0, k, s = torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), torch.ones(4, 1)
    with torch.no_grad():
        path = integrate(net, z0, k, s)
    assert not path.requires_grad and (path[-1] - path[0]).abs().sum() > 0

    def generic(z, t, k):
        return net(z, t, k)

    with torch.no_grad():
        generic_path = integrate(generic, z0, k, s)
    torch.testing.assert_close(generic_path, path)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference mode"):
        integrate(net, z0, k, s)


@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_packed_flow_matches_the_generic_flow_with_uneven_potentials(solver):
    # Potential 1 gets one sample, potential 2 none: the packing pads, and must not leak.
    torch.manual_seed(1)
    net = PotentialNetwork(4, 3, hidden_dims=(16, 16)).double()
    z0 = torch.randn(6, 4, dtype=torch.float64)
    k = torch.tensor([0, 0, 1, 0, 0, 0])
    s = torch.tensor([[1.0], [-1.0], [1.0], [1.0], [-1.0], [1.0]], dtype=torch.float64)
    config = FlowConfig(num_points=4, solver=solver, step_size=0.05)
    packed = integrate(net, z0, k, s, config)
    generic = integrate(lambda z, t, k: net(z, t, k), z0, k, s, config)
    assert torch.equal(packed[0], z0)
    torch.testing.assert_close(packed, generic, atol=1e-10, rtol=1e-10)
    for path in (packed, generic):
        net.zero_grad()
        path[-1].pow(2).sum().backward()
        grads = [w.grad.clone() for w in net.weights]
        if path is packed:
            expected = grads
    torch.testing.assert_close(grads, expected, atol=1e-10, rtol=1e-10)


def test_bad_flow_settings_are_refused():
    with pytest.raises(ValueError, match="unknown solver 'leapfrog'"):
        FlowConfig(solver="leapfrog")
    with pytest.raises(ValueError, match="step_size must be in"):
        FlowConfig(step_size=-0.1)
    with pytest.raises(ValueError, match="t_end must be positive"):
        FlowConfig(t_end=0.0)
    net = PotentialNetwork(3, 2)
    with pytest.raises(ValueError, match="direction must hold"):
        integrate(net, torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([[1.0], [0.5]]))


def test_variation_term_is_bounded_and_uses_the_jvp():
    weight = torch.tensor([[2.0, 0.0], [0.0, 3.0]])

    def generator(z):
        return z @ weight

    z = torch.zeros(3, 2)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    images, speed = image_velocity(generator, z, v)
    torch.testing.assert_close(speed.detach(), torch.tensor([2.0, 4.5, 6.5]))
    torch.testing.assert_close(images, torch.zeros(3, 2))
    assert float(variation_loss(speed, "hinge", eps=1.0)) == 0
    assert float(variation_loss(speed * 0, "hinge", eps=1.0)) == 1
    assert float(variation_loss(speed * 0, "log", eps=1e-4)) == pytest.approx(-math.log(1e-4))
    variation_loss(speed, "log").backward()
    assert v.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown variation form 'abs'"):
        variation_loss(speed, "abs")


def test_image_velocity_matches_the_jacobian_and_back_propagates():
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4), torch.nn.Sigmoid()
    ).double()
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    images, speed = image_velocity(decoder, z, v)
    jacobians = torch.stack([torch.autograd.functional.jacobian(decoder, z[i]) for i in range(5)])
    expected = torch.einsum("bpd,bd->bp", jacobians, v).pow(2).mean(-1)
    torch.testing.assert_close(images, decoder(z))
    torch.testing.assert_close(speed, expected)
    assert torch.autograd.gradcheck(lambda z, v: image_velocity(decoder, z, v)[1], (z, v))
    _, still = image_velocity(lambda z: torch.ones(z.shape[0], 4, dtype=z.dtype), z, v)
    torch.testing.assert_close(still, torch.zeros(5, dtype=torch.float64))
    with torch.no_grad():
        torch.testing.assert_close(image_velocity(decoder, z, v)[1], expected)
    with torch.inference_mode():
        torch.testing.assert_close(image_velocity(decoder, z, v)[1], expected.detach())


@pytest.mark.parametrize(
    "hidden,activation", [((16,), "tanh"), ((16, 16), "softplus"), ((8, 12, 8), "silu")]
)
def test_hand_differentiated_euler_matches_autograd(hidden, activation):
    """Euler on a PotentialNetwork runs packed_euler, whose backward is written out; it must
    give autograd's values and gradients (codes and every parameter), padding included."""
    from potentialflow.flows.odeflow import _hand_differentiated

    torch.manual_seed(2)
    net = PotentialNetwork(4, 3, hidden_dims=hidden, activation=activation).double()
    z0 = torch.randn(7, 4, dtype=torch.float64)
    k = torch.tensor([0, 0, 1, 0, 0, 0, 1])  # potential 2 has no samples: padded rows
    s = torch.tensor([[1.0], [-1.0], [1.0], [1.0], [-1.0], [1.0], [-1.0]], dtype=torch.float64)
    config = FlowConfig(num_points=5, solver="euler")
    assert _hand_differentiated(net, config)
    weights = torch.randn(5, 7, 4, dtype=torch.float64)  # a loss on every output time
    results = []
    for potential in (net, lambda z, t, k: net(z, t, k)):
        net.zero_grad()
        z = z0.clone().requires_grad_(True)
        path = integrate(potential, z, k, s, config)
        (path * weights).sum().backward()
        grads = [p.grad.clone() for p in net.parameters() if p.requires_grad]
        results.append((path.detach(), z.grad, grads))
    (path, dz, grads), (expected_path, expected_dz, expected_grads) = results
    torch.testing.assert_close(path, expected_path, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(dz, expected_dz, atol=1e-12, rtol=1e-10)
    assert len(grads) == len(list(net.parameters())) - 1  # all but the output bias
    torch.testing.assert_close(grads, expected_grads, atol=1e-12, rtol=1e-10)


def test_hand_differentiated_euler_gradcheck_float64():
    torch.manual_seed(0)
    net = PotentialNetwork(3, 2, hidden_dims=(8, 8)).double()
    k = torch.tensor([0, 1, 1])
    s = torch.tensor([[1.0], [-1.0], [1.0]], dtype=torch.float64)
    z0 = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    config = FlowConfig(num_points=4, solver="euler")
    assert torch.autograd.gradcheck(lambda z: integrate(net, z, k, s, config), (z0,))
    # The hand-written backward is first-order only, and says so.
    path = integrate(net, z0, k, s, config)
    (g,) = torch.autograd.grad(path[-1].sum(), z0, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), z0)
