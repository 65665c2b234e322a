"""``lissa``: the stochastic Neumann-series iHVP of Agarwal et al. (2016), as used by Koh & Liang (2017)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor
from tqdm.auto import tqdm

from benchmark import Estimator, EstimatorFailed, hookimpl
from benchmark.config import non_negative, positive

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
            contraction.
        depth: ``J``, recursion steps per repeat.
        repeats: ``R``, independent recursions averaged.
        batch_size: training examples per stochastic Hessian.
        seed: seed of the minibatch sampling.
    """

    damping: float = 0.001
    scale: float = 50.0
    depth: int = 1000
    repeats: int = 1
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        non_negative(damping=self.damping)
        positive(scale=self.scale, depth=self.depth, repeats=self.repeats, batch_size=self.batch_size)


class Lissa(Estimator):
    """LiSSA: ``h_0 = v``, ``h_j = v + h_{j-1} - (H_j + lambda I) h_{j-1} / gamma``, result ``h_J / gamma``.

    ``H_j`` is the Hessian of the objective on a uniformly sampled minibatch. The fixed point is
    ``(H + lambda I)^-1 v``; ``damping`` is ``lambda`` itself (Koh & Liang's code uses ``lambda * gamma``).
    Cost: ``R * J`` minibatch Hessian-vector products. Fails, as a result marked failed with the step and the norm,
    when the estimate becomes non-finite or explodes (``gamma`` below the top eigenvalue). Diagnostics:
    ``relative_change``, the change of the estimate over the last 10% of the steps relative to its norm.
    """

    name = "lissa"
    Config = LissaConfig

    def ihvp(self, vectors: Tensor) -> Tensor:
        problem = self._require_problem()
        c = self.config
        generator = torch.Generator().manual_seed(c.seed)
        batch = min(c.batch_size, problem.n_train)
        tail = max(1, c.depth // 10)
        bound = float(torch.linalg.vector_norm(vectors, dim=1).max()) * c.scale / max(c.damping, 1e-6)
        limit = DIVERGENCE_FACTOR * bound
        total = torch.zeros_like(vectors)
        changes = []
        bar = tqdm(total=c.repeats * c.depth, desc="lissa", unit="step", leave=False, mininterval=0.5,
                   disable=not self.progress)
        for repeat in range(c.repeats):
            estimate = vectors.clone()
            for step in range(1, c.depth + 1):
                if step == c.depth - tail + 1:
                    earlier = estimate.clone()
                indices = torch.randint(problem.n_train, (batch,), generator=generator).to(problem.device)
                curvature = problem.hvp(estimate, indices) + c.damping * estimate
                estimate = vectors + estimate - curvature / c.scale
                if step % 10 == 0 or step == c.depth:
                    norm = float(torch.linalg.vector_norm(estimate, dim=1).max())
                    if not norm < limit:  # also catches NaN
                        raise EstimatorFailed(
                            f"LiSSA diverged at step {step} of repeat {repeat + 1} (estimate norm {norm:.3g}): "
                            f"lissa.scale={c.scale:g} is too small for the minibatch Hessians' top eigenvalues; "
                            "raise it"
                        )
                bar.update()
            norms = torch.linalg.vector_norm(estimate, dim=1).clamp_min(1e-300)
            changes.append(float((torch.linalg.vector_norm(estimate - earlier, dim=1) / norms).max()))
            total += estimate / c.scale
        bar.close()
        self.diagnostics = {"relative_change": max(changes), "steps": c.repeats * c.depth}
        return total / c.repeats


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [Lissa]
