"""The baseline solver: end-to-end Adam on the cross-model objective (no splitting).

Each epoch visits every item of the largest modality once in mini-batches; a batch draws
``batch_size`` items per modality (the same indices in every modality when relevance is by
pairs, so paired items meet). The relevance term of a batch is normalised by the batch's
sum of ``R`` (a ratio estimate of the full term; exact with full batches).
"""

from __future__ import annotations

import math
import time

import torch

from commonspace.learning.admm import network_outputs, objective_terms
from commonspace.learning.network import forward_buckets


def solve_adam(problem, nets, data, *, gamma, max_iter, tol, learning_rate, batch_size, rng,
               scale=None, callback=None, progress=None):
    """Run Adam in place on ``nets``; returns ``(theta (r, C), history list of dicts)``.

    scale : None for a free linear classifier ``Theta``; a number ``s`` for a cosine classifier,
        whose logits are ``s * u^T theta_c / ||theta_c||`` (with unit-norm ``u``: ``s`` times a
        cosine, so ``s`` is an inverse temperature). The returned ``theta`` is then the
        effective ``s * theta_c / ||theta_c||``, so ``u @ theta`` gives the logits either way.
    Stops early when ``callback(iteration, theta, history)`` returns True.
    """
    names = problem.names
    r = next(iter(nets.values())).layers[-1].out_channels
    C = max(problem.C, 1)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    theta = torch.zeros(r, C, requires_grad=True)
    with torch.no_grad():
        theta.normal_(0.0, 1.0 / math.sqrt(r), generator=gen)
    def effective(t):
        return t if scale is None else scale * t / t.norm(dim=0, keepdim=True).clamp_min(1e-12)

    params = [p for k in names for p in nets[k].parameters()] + [theta]
    opt = torch.optim.Adam(params, lr=learning_rate)
    Y = torch.from_numpy(problem.Y).float()
    lw = torch.from_numpy(problem.label_weight).float()
    sizes = problem.sizes
    n_max = max(sizes.values())
    bs = n_max if batch_size is None else min(int(batch_size), n_max)
    steps = math.ceil(n_max / bs)
    same_index = len(set(sizes.values())) == 1 and any(
        rel.kind == "sparse" for rel in problem.relevance.values())
    history, prev, elapsed = [], None, 0.0
    for it in range(max_iter):
        t0 = time.perf_counter()
        for _ in range(steps):
            idx = _batch_indices(sizes, bs, same_index, gen)
            out = {}
            for k in names:
                x, lengths = data[k]
                lb = lengths[idx[k]]
                out[k] = forward_buckets(nets[k], x[idx[k]], lb)
            loss = _batch_objective(problem, out, idx, effective(theta), Y, lw, gamma, nets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        th = effective(theta.detach()).double().numpy()
        F = network_outputs(nets, data, problem)
        terms = objective_terms(problem, F, th, nets, gamma)
        change = (abs(terms["objective"] - prev) / max(abs(prev), 1e-12)
                  if prev is not None else float("inf"))
        prev = terms["objective"]
        elapsed += time.perf_counter() - t0
        history.append({"iteration": it + 1, **terms, "primal_residual": 0.0,
                        "relative_change": change if math.isfinite(change) else None,
                        "seconds": elapsed})
        if progress is not None:
            progress(history[-1])
        if callback is not None and callback(it + 1, th, history):
            break
        if change < tol:
            break
    return effective(theta.detach()).double().numpy(), history


def _batch_indices(sizes, bs, same_index, gen):
    if same_index:
        n = next(iter(sizes.values()))
        idx = torch.randperm(n, generator=gen)[:bs]
        return {k: idx for k in sizes}
    return {k: torch.randperm(n, generator=gen)[: min(bs, n)] for k, n in sizes.items()}


def _batch_objective(problem, out, idx, theta, Y, lw, gamma, nets):
    loss = gamma * ((theta ** 2).sum() + sum(nets[k].weight_norm2() for k in problem.names))
    for (k, k2), rel in problem.relevance.items():
        Rb = torch.from_numpy(rel.block(idx[k].numpy(), idx[k2].numpy()))
        total = Rb.sum()
        if total <= 0:
            continue
        u, v = out[k], out[k2]
        sq = (Rb.sum(1) * (u ** 2).sum(1)).sum() + (Rb.sum(0) * (v ** 2).sum(1)).sum() \
            - 2 * (Rb * (u @ v.T)).sum()
        loss = loss + problem.alpha * problem.pair_weight * sq / total
    if problem.C and problem.beta:
        for k in problem.names:
            sl = problem.slice(k)
            rows = idx[k] + sl.start
            w = lw[rows]
            if float(w.sum()) == 0:
                continue
            z = out[k] @ theta
            if problem.loss == "squared":
                per = ((z - Y[rows]) ** 2).sum(1)
            else:
                per = -(torch.log_softmax(z, dim=1) * Y[rows]).sum(1)
            loss = loss + problem.beta * problem.modality_weight * (w * per).sum() / w.sum()
    return loss
