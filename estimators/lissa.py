"""``lissa``: the stochastic Neumann-series iHVP of Agarwal et al. (2016), as used by Koh & Liang (2017)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from benchmark import LAYERS, Estimator, EstimatorFailed, Problem, ScopedEstimator, hookimpl, non_negative, positive
from benchmark.numerics.curvature import top_eigenvalue

DIVERGENCE_FACTOR = 1e3
"""The recursion has diverged once ``||h_j||`` exceeds this multiple of ``gamma / lambda * ||v||``, the norm of the
fixed point ``gamma (H + lambda I)^-1 v`` when ``H`` is positive semi-definite."""


@dataclasses.dataclass
class LissaConfig:
    """Hyperparameters of :class:`Lissa` (symbols of the recursion in :class:`Lissa`'s docstring).

    Attributes:
        damping: ``lambda`` in ``(H + lambda I)^-1``.
        scale: ``gamma``; the recursion contracts only while ``gamma`` exceeds half the largest eigenvalue of the
            minibatch Hessians (plus damping), and diverges otherwise; above the largest eigenvalue every step is a
            contraction. ``None``: ``scale_margin`` times the largest top eigenvalue (plus damping) of
            ``SCALE_PROBES`` sampled minibatch Hessians, found by power iteration in :meth:`Lissa.prepare`.
        scale_margin: factor over that eigenvalue when ``scale`` is ``None``. Above 1 every step contracts; larger
            values shrink the stochastic error floor (each step averages more minibatches) but slow the convergence
            along flat directions (measured on the conformance logistic regression at weight decay 0.01, 5,000
            steps, top minibatch eigenvalue 0.51: relative error 0.11 at scale 1, 0.027 at scale 5).
        depth: ``J``, the most recursion steps per repeat.
        tol: stop a repeat early once the estimate changed by less than ``tol`` (relative) over the last
            ``depth // 10`` steps, checked every 100 steps ("time to accuracy"); 0 always runs ``depth`` steps.
            Single-minibatch LiSSA has a stochastic floor (a relative change of a few percent), so a ``tol`` below it
            never stops early and ``converged`` stays false: that is a finding about LiSSA, reported as such.
        repeats: ``R``, independent recursions averaged.
        batch_size: training examples per stochastic Hessian. Minibatches are drawn by random reshuffling (each
            training point once per pass over the data, as a shuffled data loader does), not independently: on the
            Iris MLP at depth 8,000, batch 32, the correlation of 10 test points' influence with ``exact`` rose from
            0.978 (independent draws) to 0.998 (pyDVL, cycling through a data loader in order: 0.999).
        seed: seed of the minibatch sampling.
        layers: ``all``, or ``last``: the curvature of the last module's parameters only, the iHVP zero on every other
            parameter (:class:`~benchmark.ScopedEstimator`).
    """

    damping: float = 0.001
    scale: float | None = None
    scale_margin: float = 10.0
    depth: int = 5000
    tol: float = 0.0
    repeats: int = 1
    batch_size: int = 16
    seed: int = 0
    layers: str = dataclasses.field(default="all", metadata={"choices": LAYERS})

    def __post_init__(self) -> None:
        non_negative(damping=self.damping, tol=self.tol)
        positive(scale_margin=self.scale_margin, depth=self.depth, repeats=self.repeats, batch_size=self.batch_size)
        if self.scale is not None:
            positive(scale=self.scale)


class Lissa(ScopedEstimator):
    """LiSSA: ``h_0 = v``, ``h_j = v + h_{j-1} - (H_j + lambda I) h_{j-1} / gamma``, result ``h_J / gamma``.

    ``H_j`` is the Hessian of the objective on a uniformly sampled minibatch. The fixed point is
    ``(H + lambda I)^-1 v``; ``damping`` is ``lambda`` itself (Koh & Liang's code uses ``lambda * gamma``).
    Cost: at most ``R * J`` minibatch Hessian-vector products (plus ``SCALE_PROBES * 20`` to pick ``gamma``). The
    error along an eigenvector of eigenvalue ``e`` shrinks by ``1 - (e + lambda) / gamma`` per step, so converging
    along the flattest directions takes about ``gamma / (e_min + lambda)`` steps: small damping makes LiSSA slow,
    and ``converged`` in the diagnostics says whether the estimate settled (relative change over the last
    ``J // 10`` steps at most ``tol``) before ``depth`` ran out. Fails, as a result marked failed with the step and
    the norm, when the estimate becomes non-finite or explodes (``gamma`` below the top eigenvalue).
    Diagnostics: ``scale`` (the ``gamma`` used), ``steps``, ``relative_change``, ``converged``.
    """

    name = "lissa"
    Config = LissaConfig
    damping_field = "damping"
    CHECK_EVERY = 100
    SCALE_PROBES = 10

    def prepare_scope(self, problem: Problem) -> None:
        c = self.config
        if c.scale is not None:
            self.scale = c.scale
            return
        generator = torch.Generator().manual_seed(c.seed + 1)
        batch = min(c.batch_size, problem.n_train)
        tops = [
            abs(
                top_eigenvalue(
                    problem,
                    iterations=20,
                    seed=c.seed + probe,
                    indices=torch.randint(problem.n_train, (batch,), generator=generator).to(problem.device),
                )
            )
            for probe in range(self.SCALE_PROBES)
        ]
        self.scale = c.scale_margin * (max(tops) + c.damping)

    def scope_ihvp(self, vectors: Tensor) -> Tensor:
        problem = self.scope
        c = self.config
        scale = self.scale
        batch = min(c.batch_size, problem.n_train)
        minibatches = reshuffled_minibatches(problem.n_train, batch, torch.Generator().manual_seed(c.seed))
        tail = max(1, c.depth // 10)
        bound = float(torch.linalg.vector_norm(vectors, dim=1).max()) * scale / max(c.damping, 1e-6)
        limit = DIVERGENCE_FACTOR * bound
        total = torch.zeros_like(vectors)
        changes, steps = [], 0
        count = vectors.shape[0]  # the label says what this bar computes: the run shows more than one
        bar = tqdm(
            total=c.repeats * c.depth,
            desc=f"lissa: {count} iHVP{'s' if count != 1 else ''}",
            unit="step",
            leave=False,
            mininterval=0.5,
            disable=not self.progress,
        )
        for repeat in range(c.repeats):
            estimate = vectors.clone()
            history = {0: estimate}  # estimates at multiples of CHECK_EVERY, to measure the change over the tail
            change = float("inf")
            for step in range(1, c.depth + 1):
                indices = next(minibatches).to(problem.device)
                curvature = problem.hvp(estimate, indices) + c.damping * estimate
                estimate = vectors + estimate - curvature / scale
                steps += 1
                bar.update()
                if step % 10 == 0 or step == c.depth:
                    norm = float(torch.linalg.vector_norm(estimate, dim=1).max())
                    if not norm < limit:  # also catches NaN
                        raise EstimatorFailed(
                            f"LiSSA diverged at step {step} of repeat {repeat + 1} (estimate norm {norm:.3g}): "
                            f"lissa.scale={scale:g} is too small for the minibatch Hessians' top eigenvalues; "
                            "raise it (or lissa.scale_margin)"
                        )
                if step % self.CHECK_EVERY == 0 or step == c.depth:
                    back = max(0, step - tail)
                    earlier = history[back - back % self.CHECK_EVERY]
                    norms = torch.linalg.vector_norm(estimate, dim=1).clamp_min(1e-300)
                    change = float((torch.linalg.vector_norm(estimate - earlier, dim=1) / norms).max())
                    history[step] = estimate
                    history = {k: v for k, v in history.items() if k >= step - tail - self.CHECK_EVERY}
                    if step >= tail and change <= c.tol:
                        break
            changes.append(change)
            total += estimate / scale
        bar.close()
        self.diagnostics = {
            "scale": scale,
            "steps": steps,
            "relative_change": max(changes),
            "converged": max(changes) <= c.tol,
        }
        return total / c.repeats


def reshuffled_minibatches(n: int, size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless minibatches of ``size`` indices out of ``n``: consecutive slices of a stream of random permutations,
    so every ``n`` consecutive indices hold each point once (a minibatch may span two permutations)."""
    stream = torch.randperm(n, generator=generator)
    while True:
        while len(stream) < size:
            stream = torch.cat([stream, torch.randperm(n, generator=generator)])
        yield stream[:size]
        stream = stream[size:]


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [Lissa]
