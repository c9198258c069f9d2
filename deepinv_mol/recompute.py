r"""Recomputation instead of storage (activation checkpointing) for the differentiable steps of MOL and LUSER.

A training step of a deep-equilibrium model keeps the autograd graph of *one* differentiable step, but that
step alone holds every hidden feature map of its CNN (a width-64 map per layer). :func:`recompute_call`
evaluates a network so that nothing but its input is stored, and rebuilds what the backward needs:

* a :class:`deepinv_mol.models.MonotoneCNN` with ReLU activations (MOL's default network) runs through
  :class:`_LeanReLUCNN`: the forward keeps only the input image; the backward walks the layers from the last
  to the first, recomputing each layer's input from the stored image under :func:`torch.no_grad` and
  applying the exact convolution/ReLU derivatives. At most three feature maps are alive at any time
  (instead of one per layer kept for the whole backward, plus the gradient maps), at the price of
  :math:`L(L+1)/2` instead of :math:`L` convolutions per backward pass (:math:`L` = depth);
* any other module goes through :func:`torch.utils.checkpoint.checkpoint` (non-reentrant): its input is
  stored, its forward is re-run (with gradients) when the backward needs the activations.

Gradients are those of the stored computation (same formulas, same order of floating-point operations up
to the summation order of the weight gradients): ``tests/test_recompute.py`` checks 1e-6 relative agreement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["recompute_call"]

_CONV = {2: (F.conv2d, torch.nn.grad.conv2d_input, torch.nn.grad.conv2d_weight),
         3: (F.conv3d, torch.nn.grad.conv3d_input, torch.nn.grad.conv3d_weight)}


class _LeanReLUCNN(torch.autograd.Function):
    r"""``h_L`` of ``h_{i+1} = relu(conv(h_i, w_i) + b_i)`` (no ReLU after the last layer), storing only
    ``h_0`` and the weights; the backward recomputes ``h_i`` from ``h_0`` layer by layer."""

    @staticmethod
    def forward(ctx, x, dims, padding, depth, *params):
        conv = _CONV[dims][0]
        weights, biases = params[:depth], params[depth:]
        with torch.no_grad():
            h = x
            for i in range(depth):
                h = conv(h, weights[i], biases[i], padding=padding)
                if i < depth - 1:
                    h = torch.relu_(h)
        ctx.dims, ctx.padding, ctx.depth = dims, padding, depth
        ctx.has_bias = [b is not None for b in biases]
        ctx.save_for_backward(x, *weights, *[b for b in biases if b is not None])
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        conv, conv_input, conv_weight = _CONV[ctx.dims]
        depth, pad = ctx.depth, ctx.padding
        saved = ctx.saved_tensors
        x, weights, rest = saved[0], saved[1 : 1 + depth], list(saved[1 + depth :])
        biases = [rest.pop(0) if has else None for has in ctx.has_bias]
        grad_w: list = [None] * depth
        grad_b: list = [None] * depth
        g = grad
        for i in range(depth - 1, -1, -1):
            h = x
            for j in range(i):  # the input of layer i, recomputed (two maps alive at a time)
                h = torch.relu_(conv(h, weights[j], biases[j], padding=pad))
            if i < depth - 1:  # g is the gradient w.r.t. relu(a_i): mask it by a_i > 0
                mask = conv(h, weights[i], biases[i], padding=pad) > 0
                g = g * mask if g is grad else g.mul_(mask)
                del mask
            if ctx.needs_input_grad[4 + i]:
                grad_w[i] = conv_weight(h, weights[i].shape, g, padding=pad)
            if biases[i] is not None and ctx.needs_input_grad[4 + depth + i]:
                grad_b[i] = g.sum(dim=(0,) + tuple(range(2, g.ndim)))
            shape = h.shape
            del h  # the input grad needs only the input's shape: one map fewer alive
            if i > 0 or ctx.needs_input_grad[0]:
                g = conv_input(shape, weights[i], g, padding=pad)
        grad_x = g if ctx.needs_input_grad[0] else None
        return (grad_x, None, None, None, *grad_w, *grad_b)


def _lean_monotone(net, x: Tensor) -> Tensor | None:
    # MonotoneCNN with ReLU and the package's zero-padded convolutions; None when it does not apply
    from .models.monotone import MonotoneCNN

    if not isinstance(net, MonotoneCNN) or getattr(net, "activation", "relu") != "relu":
        return None
    if not isinstance(x, Tensor) or x.ndim != net.dims + 2 or x.shape[1] != net.channels:
        return None  # let the network's own forward raise its error message
    weights = [w.to(x.dtype) for w in net.normalised_weights()]
    biases = [None if c.bias is None else c.bias.to(x.dtype) for c in net.convs]
    return _LeanReLUCNN.apply(x, net.dims, net.kernel_size // 2, net.depth, *weights, *biases)


def recompute_call(net: nn.Module, x: Tensor) -> Tensor:
    r"""``net(x)``, recomputed in the backward pass instead of stored (when gradients are enabled).

    Without gradients (``torch.no_grad``, or nothing requires grad) this is exactly ``net(x)``.

    :param torch.nn.Module net: the network (a :class:`deepinv_mol.models.MonotoneCNN` with ReLU takes the
        layer-wise path described in the module docstring; anything else :func:`torch.utils.checkpoint.checkpoint`).
    :param torch.Tensor x: its input.
    :return: ``net(x)``, with the gradient of ``net(x)``.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.models import MonotoneCNN
    >>> from deepinv_mol.recompute import recompute_call
    >>> net = MonotoneCNN(channels=1, width=8, depth=3).eval()
    >>> x = torch.randn(1, 1, 8, 8, requires_grad=True)
    >>> bool(torch.allclose(recompute_call(net, x), net(x), atol=1e-6))
    True
    """
    if not torch.is_grad_enabled():
        return net(x)
    lean = _lean_monotone(net, x)
    if lean is not None:
        return lean
    return torch.utils.checkpoint.checkpoint(net, x, use_reentrant=False)
