"""Bad inputs in the networks, the conv-norm module, the guarantees and the Lipschitz penalty: one table of
(case, callable, exception type, message regex)."""

import math

import deepinv as dinv
import pytest
import torch

from deepinv_mol.guarantees import certify, worst_case_perturbation
from deepinv_mol.loss import LipschitzPenalty
from deepinv_mol.models import FeedForwardRegularizer, MonotoneCNN, ShallowEquilibrium
from deepinv_mol.models.conv_norm import CertifiedNorms, conv_norm_bound, power_iteration
from deepinv_mol.optim import MOL

INF, NAN = math.inf, math.nan


def _mol():
    return MOL(denoiser=MonotoneCNN(width=4, depth=2), lambda_=1.0)


def _physics():
    return dinv.physics.LinearPhysics(A=lambda x: x, A_adjoint=lambda y: y)


CASES = [
    # MonotoneCNN constructor
    ("penalty lipschitz inf", lambda: MonotoneCNN(constraint="penalty", lipschitz=INF), ValueError, "lipschitz must be a finite float"),
    ("strict lipschitz nan", lambda: MonotoneCNN(lipschitz=NAN), ValueError, "lipschitz must be a finite float"),
    ("strict lipschitz 1", lambda: MonotoneCNN(lipschitz=1.0), ValueError, r"lipschitz must be in \(0, 1\)"),
    ("strict lipschitz 0", lambda: MonotoneCNN(lipschitz=0.0), ValueError, r"lipschitz must be in \(0, 1\)"),
    ("penalty lipschitz negative", lambda: MonotoneCNN(constraint="penalty", lipschitz=-0.5), ValueError, "lipschitz must be >= 0"),
    ("lipschitz string", lambda: MonotoneCNN(lipschitz="0.9"), ValueError, "lipschitz must be a finite float"),
    ("width 0", lambda: MonotoneCNN(width=0), ValueError, "width must be an int >= 1"),
    ("width float", lambda: MonotoneCNN(width=8.0), ValueError, "width must be an int >= 1"),
    ("channels bool", lambda: MonotoneCNN(channels=True), ValueError, "channels must be an int >= 1"),
    ("depth 1", lambda: MonotoneCNN(depth=1), ValueError, "depth must be an int >= 2"),
    ("kernel even", lambda: MonotoneCNN(kernel_size=4), ValueError, "kernel_size must be odd"),
    ("dims 1", lambda: MonotoneCNN(dims=1), ValueError, "dims must be 2"),
    ("constraint", lambda: MonotoneCNN(constraint="soft"), ValueError, "constraint must be 'strict' or 'penalty'"),
    ("activation", lambda: MonotoneCNN(activation="tanh"), ValueError, "activation must be 'relu' or 'maxmin'"),
    ("init", lambda: MonotoneCNN(init="orthogonal"), ValueError, "init must be 'default' or 'identity'"),
    ("maxmin odd width", lambda: MonotoneCNN(width=7, activation="maxmin"), ValueError, "width must be even"),
    ("identity without bias", lambda: MonotoneCNN(init="identity", bias=False), ValueError, "needs bias=True"),
    ("bias not bool", lambda: MonotoneCNN(bias="yes"), TypeError, "bias must be a bool"),
    ("power iterations 0", lambda: MonotoneCNN(n_power_iterations=0), ValueError, "n_power_iterations must be an int >= 1"),
    ("power size 0", lambda: MonotoneCNN(power_size=0), ValueError, "power_size must be a positive int"),
    ("power size wrong length", lambda: MonotoneCNN(power_size=(8,)), ValueError, "power_size must be a positive int or 2"),
    ("certificate tol 0", lambda: MonotoneCNN(certificate_tol=0.0), ValueError, "certificate_tol must be a positive finite"),
    ("certificate tol nan", lambda: MonotoneCNN(certificate_tol=NAN), ValueError, "certificate_tol must be a positive finite"),
    # MonotoneCNN forward
    ("monotone wrong channels", lambda: MonotoneCNN(width=4, depth=2)(torch.zeros(1, 3, 8, 8)), ValueError, "expects input of shape"),
    ("monotone not a tensor", lambda: MonotoneCNN(width=4, depth=2)([[0.0]]), TypeError, "expects a torch.Tensor"),
    ("penalty has no normalisation", lambda: MonotoneCNN(width=4, depth=2, constraint="penalty").update_normalisation(), ValueError, "only applies to constraint='strict'"),
    # ShallowEquilibrium constructor
    ("contraction 1", lambda: ShallowEquilibrium(contraction=1.0), ValueError, r"contraction must lie in \(0, 1\)"),
    ("contraction nan", lambda: ShallowEquilibrium(contraction=NAN), ValueError, r"contraction must lie in \(0, 1\)"),
    ("contraction string", lambda: ShallowEquilibrium(contraction="0.9"), ValueError, r"contraction must lie in \(0, 1\)"),
    ("tol negative", lambda: ShallowEquilibrium(tol=-1e-3), ValueError, "tol must be a non-negative finite float"),
    ("tol inf", lambda: ShallowEquilibrium(tol=INF), ValueError, "tol must be a non-negative finite float"),
    ("backward tol nan", lambda: ShallowEquilibrium(backward_tol=NAN), ValueError, "backward_tol must be a non-negative"),
    ("beta 0", lambda: ShallowEquilibrium(beta=0.0), ValueError, "beta must be a positive finite float"),
    ("anderson negative", lambda: ShallowEquilibrium(anderson=-1), ValueError, "anderson must be a non-negative int"),
    ("max_iter 0", lambda: ShallowEquilibrium(max_iter=0), ValueError, "max_iter must be a positive int"),
    ("backward_max_iter 0", lambda: ShallowEquilibrium(backward_max_iter=0), ValueError, "backward_max_iter must be a positive int"),
    ("shallow kernel even", lambda: ShallowEquilibrium(kernel_size=2), ValueError, "kernel_size must be a positive odd int"),
    ("shallow dims", lambda: ShallowEquilibrium(dims=4), ValueError, "dims must be 2 or 3"),
    ("shallow backward", lambda: ShallowEquilibrium(backward="unrolled"), ValueError, "backward must be 'implicit' or 'jfb'"),
    ("shallow power iterations", lambda: ShallowEquilibrium(power_iterations=-1), ValueError, "power_iterations must be a non-negative int"),
    ("shallow power size", lambda: ShallowEquilibrium(power_size=0), ValueError, "power_size must be a positive int or None"),
    # ShallowEquilibrium / FeedForwardRegularizer forward
    ("shallow complex input", lambda: ShallowEquilibrium(channels=1, width=4)(torch.zeros(1, 1, 8, 8, dtype=torch.complex64)), TypeError, "real floating-point tensor"),
    ("shallow wrong channels", lambda: ShallowEquilibrium(channels=1, width=4)(torch.zeros(1, 2, 8, 8)), ValueError, "was built with channels=1"),
    ("feedforward depth 1", lambda: FeedForwardRegularizer(depth=1), ValueError, "depth must be an int >= 2"),
    # conv-norm module
    ("bound of a matrix", lambda: conv_norm_bound(torch.zeros(3, 3)), ValueError, "expects a kernel tensor"),
    ("bound even kernel", lambda: conv_norm_bound(torch.zeros(1, 1, 2, 2)), ValueError, "odd kernel sizes"),
    ("bound tol nan", lambda: conv_norm_bound(torch.zeros(1, 1, 3, 3), tol=NAN), ValueError, "tol must be a positive finite"),
    ("bound tol 0", lambda: conv_norm_bound(torch.zeros(1, 1, 3, 3), tol=0.0), ValueError, "tol must be a positive finite"),
    ("power n_iter 0", lambda: power_iteration(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 4, 4), n_iter=0), ValueError, "n_iter must be an int >= 1"),
    ("power u shape", lambda: power_iteration(torch.zeros(2, 3, 3, 3), torch.zeros(1, 2, 4, 4)), ValueError, r"expects u of shape \(1, 3, \*grid\)"),
    ("power tol inf", lambda: power_iteration(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 4, 4), tol=INF), ValueError, "tol must be a non-negative finite"),
    ("certified norms tol", lambda: CertifiedNorms(tol=-1.0), ValueError, "tol must be a positive finite float"),
    # guarantees
    ("certify a bare network", lambda: certify(MonotoneCNN(width=4, depth=2)), TypeError, "expects a MOL-like model"),
    ("certify y without physics", lambda: certify(_mol(), y=torch.zeros(1, 2, 8, 8)), ValueError, "y needs physics"),
    ("worst case eps nan", lambda: worst_case_perturbation(_mol(), _physics(), torch.zeros(1, 2, 8, 8), eps=NAN), ValueError, "eps must be positive and finite"),
    ("worst case solver_tol", lambda: worst_case_perturbation(_mol(), _physics(), torch.zeros(1, 2, 8, 8), eps=0.1, solver_tol="fast"), ValueError, "solver_tol must be 'auto'"),
    # Lipschitz penalty
    ("penalty eps inf", lambda: LipschitzPenalty(eps=INF), ValueError, "eps must be a finite float"),
    ("penalty threshold nan", lambda: LipschitzPenalty(threshold=NAN), ValueError, "threshold must be a finite float"),
    ("penalty eps above threshold", lambda: LipschitzPenalty(eps=0.99, threshold=0.98), ValueError, "need 0 < eps < threshold"),
    ("penalty method", lambda: LipschitzPenalty(method="svd"), ValueError, "method must be 'power' or 'adversarial'"),
    ("penalty n_iter", lambda: LipschitzPenalty(n_iter=0), ValueError, "n_iter must be an int >= 1"),
    ("penalty without network", lambda: LipschitzPenalty()(x_net=torch.zeros(1, 2, 4, 4)), ValueError, "needs a network"),
]


@pytest.mark.parametrize("case, call, exc, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(case, call, exc, match):
    with pytest.raises(exc, match=match):
        call()
