"""Proximal Bregman response function (PBRF) ground truth: what an influence function with damping answers.

Bae et al. ("If Influence Functions are the Answer, Then What is the Question?", NeurIPS 2022) show that a damped
influence function with a Gauss-Newton Hessian does not linearise leave-one-out re-training but the *proximal Bregman
response*: for a removed point ``m``, the parameters minimising, warm-started at ``theta*``::

    F_m(theta) = (1/n) sum_i D_i(f(theta, x_i), f(theta*, x_i))          Bregman divergence of the loss on the outputs
               + (weight_decay / 2) ||theta - theta*||^2                  Bregman divergence of the regulariser
               - (1/n) (l_m(theta) - l_m(theta*))                         point m removed (epsilon = -1/n)
               + (damping / 2) ||theta - theta*||^2                       the proximity term

with ``D_i(z, z*) = l_i(z) - l_i(z*) - <grad_z l_i(z*), z - z*>`` (for the cross-entropy ``KL(softmax(z*) ||
softmax(z))``). ``F_m(theta*) = 0`` and its gradient there is ``-(1/n) grad l_m(theta*)``; its Hessian there is the
Gauss-Newton matrix ``G`` (with the weight decay) plus ``damping I`` minus ``(1/n) grad^2 l_m``, so to first order the
minimiser is ``theta* + (1/n) (G + damping I)^-1 g_m``: the damped Gauss-Newton influence function, which this
harness's estimators compute with the Hessian instead of ``G``. Including the regulariser's own Bregman term keeps the
weight decay in the curvature, as every estimator's ``H`` has it; without weight decay the definition is Bae et al.'s.

The truth is the change of the test loss, ``loss_test(theta_m) - loss_test(theta*)`` (this harness's sign: the predicted
change on removing ``m``). There is no reference and no drift: ``theta*`` minimises ``F`` with no point removed,
exactly. The solve (:class:`PbrfSolver`) runs in float64 on the full training set (streamed in passes): Newton's method
from ``theta*``, each step by conjugate gradients on exact Hessian-vector products and halved until the gradient norm
falls, the removed points' objectives stacked under ``vmap`` (they are independent, so one backward pass serves all),
until each model's gradient norm is below ``rtol`` times its value at ``theta*``. It never evaluates ``F`` itself: near
``theta*`` its Bregman terms are differences of losses that agree to more digits than float64 holds (a line search on
them stalls, which is why this is not L-BFGS), while its gradient is a difference of output slopes, which stays
accurate. Each entry records the gradient norm it reached; one above the tolerance is reported as not converged
(:func:`benchmark.evaluation.recording.pbrf_summary`), not hidden.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, vmap

from benchmark.common.cache import Cache
from benchmark.groundtruth.engine import GroundTruth, LooEffect, Reference, removal_weights
from benchmark.numerics.problem import Problem
from benchmark.numerics.recipes import Recipe
from benchmark.numerics.training import StreamedBatches, batch_data

log = logging.getLogger("bench")

PBRF_VERSION = 1
"""Version of the PBRF objective and solver code: part of every cache key (bump it when a change alters results)."""

DEFAULT_DAMPING = 1e-3
"""The proximity weight where neither the run (``--pbrf-damping``) nor the task's protocol states a damping."""

DEFAULT_CHUNK = 16
"""Removed points solved together (stacked) where the run does not fix ``--gt-chunk-size``."""


@dataclasses.dataclass(frozen=True)
class PbrfSolver:
    """How the proximal Bregman response is defined and solved.

    Attributes:
        damping: the proximity weight ``lambda`` (the estimators' damping): positive.
        rtol: a model is solved when its gradient norm is at most ``rtol`` times its norm at ``theta*``.
        newton_steps: Newton steps at most.
        max_cg: conjugate-gradient iterations (Hessian-vector products) at most per Newton step.
    """

    damping: float
    rtol: float = 1e-5
    newton_steps: int = 30
    max_cg: int = 2000

    def __post_init__(self) -> None:
        if not self.damping > 0:
            raise ValueError(f"PBRF damping must be positive, got {self.damping!r}")


@dataclasses.dataclass(frozen=True)
class PbrfEffect(LooEffect):
    """A PBRF entry: the effect on the test loss and how far the solve got."""

    gradient_norm: float = 0.0
    """``||grad F_m||`` at the returned parameters, relative to its value at ``theta*``."""
    products: int = 0
    """Hessian-vector products the solve spent."""


class BregmanObjective:
    """``F`` of the module docstring for stacked models, on a float64 copy of a problem, in passes over the training
    set. The outputs at ``theta*`` and the loss gradients with respect to them are computed once.

    With ``bregman=False`` it is the proximal training objective instead, ``P(theta) = (1/n) sum_i w_i l_i(theta) +
    (wd / 2) ||theta||^2 + (lambda / 2) ||theta - theta*||^2``: the losses themselves and the regulariser itself (the
    ``prox`` ground truth, :class:`ProximalGroundTruth`)."""

    def __init__(self, problem: Problem, damping: float, rows: int | None = None, bregman: bool = True):
        self.problem = problem.to(torch.float64)
        self.theta_star = self.problem.theta.detach()
        self.bregman = bregman
        self.weight_decay, self.damping = float(problem.weight_decay), float(damping)
        self.curvature = self.weight_decay + self.damping
        self.rows = rows or problem.chunk_size or 1024
        self.passes = [
            torch.arange(start, min(start + self.rows, problem.n_train), device=problem.device)
            for start in range(0, problem.n_train, self.rows)
        ]
        self._held: list[tuple[Tensor, Tensor]] | None = None
        outputs, losses, slopes = [], [], []
        params = self.problem.model_params(self.theta_star)
        with torch.no_grad():
            for x, y in self._data():
                z = self.problem.model(params, x)
                outputs.append(z)
                losses.append(self.problem.loss(z, y))
                slopes.append(grad(lambda out, y=y: self.problem.loss(out, y).sum())(z))
        self.outputs, self.losses, self.slopes = outputs, losses, slopes

    def _data(self) -> list[tuple[Tensor, Tensor]]:
        """The training passes in float64: held once for a problem in memory, streamed again for one that is not."""
        if self._held is not None:
            return self._held
        data = [(x.to(torch.float64), y) for x, y in batch_data(self.problem, self.passes)]
        if not isinstance(self.problem, StreamedBatches):
            self._held = data
        return data

    def gradient(self, thetas: Tensor, weights: Tensor, vectors: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``grad F`` of each stacked model (``Tensor[K, P]``) and, given ``vectors`` (``Tensor[K, P]``), each model's
        Hessian-vector product with its row; ``weights[k, i]`` is 0 where model ``k`` removes point ``i``, 1
        elsewhere. Values of ``F`` are never formed: near ``theta*`` they are differences of losses that agree to
        more digits than float64 holds, so the solver uses gradients and curvature only."""
        # K stacked models hold K times one model's activations (and their graphs, for the products): they are taken
        # in groups whose passes hold at most ``rows`` examples in all. Groups, not smaller passes: a model's sums then
        # run over the same passes whatever it is stacked with (smaller passes for larger stacks moved the process
        # pool's PBRF entries away from the local ones by more than the test of their agreement allows)
        group = max(1, self.rows // max(len(rows) for rows in self.passes))
        if len(thetas) > group:
            parts = [
                self.gradient(
                    thetas[begin : begin + group],
                    weights[begin : begin + group],
                    None if vectors is None else vectors[begin : begin + group],
                )
                for begin in range(0, len(thetas), group)
            ]
            products = None if vectors is None else torch.cat([part[1] for part in parts])  # type: ignore[misc]
            return torch.cat([part[0] for part in parts]), products
        n = self.problem.n_train
        thetas = thetas.detach().requires_grad_()
        gradient = torch.zeros_like(thetas)
        product = None if vectors is None else torch.zeros_like(thetas)
        problem = self.problem

        def outputs_of(theta: Tensor, x: Tensor) -> Tensor:
            return problem.model(problem.model_params(theta), x)

        for (x, y), rows, z_star, l_star, slope in zip(
            self._data(), self.passes, self.outputs, self.losses, self.slopes
        ):
            with torch.enable_grad():
                z = vmap(outputs_of, in_dims=(0, None))(thetas, x)  # [K, N, C]
                losses = vmap(problem.loss, in_dims=(0, None))(z, y)  # [K, N]
                if self.bregman:
                    bregman = losses - l_star - ((z - z_star) * slope).flatten(2).sum(-1)
                    part = (bregman + (weights[:, rows] - 1.0) * (losses - l_star)).sum() / n
                else:
                    part = (weights[:, rows] * (losses - l_star)).sum() / n
                (part_grad,) = torch.autograd.grad(part, thetas, create_graph=vectors is not None)
                if vectors is not None and product is not None:
                    (part_product,) = torch.autograd.grad((part_grad * vectors).sum(), thetas)
                    product += part_product
            gradient += part_grad.detach()
        if self.bregman:
            gradient += self.curvature * (thetas.detach() - self.theta_star)
        else:
            gradient += self.weight_decay * thetas.detach() + self.damping * (thetas.detach() - self.theta_star)
        if vectors is not None and product is not None:
            product += self.curvature * vectors
        return gradient, product

    def solve(self, weights: Tensor, solver: PbrfSolver) -> tuple[Tensor, Tensor, int]:
        """Minimise ``F`` for each row of ``weights`` from ``theta*`` by Newton's method, each Newton system solved by
        conjugate gradients on exact Hessian-vector products (stopped at negative curvature); returns the parameters
        ``Tensor[K, P]`` (float64), each model's final gradient norm relative to its norm at ``theta*``, and the
        Hessian-vector products spent (per model)."""
        thetas = self.theta_star.unsqueeze(0).expand(len(weights), -1).clone()
        gradient, _ = self.gradient(thetas, weights)
        scale = torch.linalg.vector_norm(gradient, dim=1).clamp_min(torch.finfo(torch.float64).tiny)
        relative = torch.ones_like(scale)
        stalled = torch.zeros_like(scale, dtype=torch.bool)
        products = 0
        for _ in range(solver.newton_steps):
            # the forcing term: each Newton system solved to a tenth of the accuracy still missing (and no tighter than
            # the target), so the outer iteration converges fast while no CG step is spent on precision never used
            target = torch.maximum(0.1 * relative, torch.full_like(relative, 0.5 * solver.rtol)) * scale
            # a solved model takes no further step, so its result does not depend on what it was stacked with; nor does
            # one whose last step found no decrease (at the precision floor of its gradient): it is reported unsolved
            target = torch.where((relative <= solver.rtol) | stalled, torch.inf, target)
            step, spent = self._newton_step(thetas, weights, gradient, target, solver.max_cg)
            products += spent
            thetas, gradient, relative, no_decrease = self._backtrack(thetas, weights, gradient, step, relative, scale)
            stalled |= no_decrease & (relative > solver.rtol)
            if bool(((relative <= solver.rtol) | stalled).all()) or not bool(torch.isfinite(relative).all()):
                break
        return thetas, relative, products

    def _backtrack(
        self,
        thetas: Tensor,
        weights: Tensor,
        gradient: Tensor,
        step: Tensor,
        relative: Tensor,
        scale: Tensor,
        halvings: int = 20,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Take each row's Newton step, halved until its gradient norm falls (a full step from far away, where a large
        removal makes ``F`` far from quadratic, can overshoot); a row whose gradient norm falls for no step length
        stays where it is. Returns the parameters, gradients, relative gradient norms, and which rows stayed."""
        length = torch.ones_like(relative)
        pending = step.abs().amax(dim=1) > 0  # rows without a step (solved, stalled) keep their point
        best, best_gradient, best_relative = thetas.clone(), gradient.clone(), relative.clone()
        for _ in range(halvings + 1):
            if not bool(pending.any()):
                break
            trial = thetas + length.unsqueeze(1) * step
            trial_gradient, _ = self.gradient(trial, weights)
            trial_relative = torch.linalg.vector_norm(trial_gradient, dim=1) / scale
            accept = pending & (trial_relative < relative)
            best = torch.where(accept.unsqueeze(1), trial, best)
            best_gradient = torch.where(accept.unsqueeze(1), trial_gradient, best_gradient)
            best_relative = torch.where(accept, trial_relative, best_relative)
            pending = pending & ~accept
            length = torch.where(pending, 0.5 * length, length)
        return best, best_gradient, best_relative, pending

    def _newton_step(
        self, thetas: Tensor, weights: Tensor, gradient: Tensor, target: Tensor, max_cg: int
    ) -> tuple[Tensor, int]:
        """CG on ``H step = -gradient`` per row until its residual norm is below ``target`` (per row)."""
        step = torch.zeros_like(gradient)
        residual = -gradient
        direction = residual.clone()
        squared = residual.square().sum(1)
        active = squared.sqrt() > target
        spent = 0
        while bool(active.any()) and spent < max_cg:
            _, product = self.gradient(thetas, weights, direction)
            assert product is not None
            spent += 1
            curvature = (direction * product).sum(1)
            active = active & (curvature > 0)  # negative curvature: keep the step so far (a descent direction)
            alpha = torch.where(active, squared / curvature.where(active, torch.ones_like(curvature)), 0.0)
            step = step + alpha.unsqueeze(1) * direction
            residual = residual - alpha.unsqueeze(1) * product
            new_squared = residual.square().sum(1)
            active = active & (new_squared.sqrt() > target)
            beta = torch.where(active, new_squared / squared.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
            direction = torch.where(active.unsqueeze(1), residual + beta.unsqueeze(1) * direction, 0.0)
            squared = new_squared
        return step, spent

    def test_loss(self, thetas: Tensor, test_index: int) -> Tensor:
        """The test loss of each stacked model (float64)."""
        problem = self.problem
        x = problem.x_test[test_index : test_index + 1]
        y = problem.y_test[test_index : test_index + 1]
        return torch.stack([problem.losses_float64(theta, x, y)[0] for theta in thetas])


class PbrfGroundTruth(GroundTruth):
    """PBRF effects on one test point (the module docstring), cached per removed point like leave-one-out effects
    (same locks, resumption, executors and corruption checks), under ``pbrf/`` in the cache."""

    kind = "pbrf"
    title = "proximal Bregman response"
    effect_type = PbrfEffect

    def __init__(
        self,
        problem: Problem,
        solver: PbrfSolver,
        cache: Cache,
        key: dict[str, Any],
        test_index: int,
        chunk_size: int | None = None,
        progress: bool = False,
    ):
        self.solver = solver
        self._objective: BregmanObjective | None = None
        # PBRF re-trains nothing with SGD: the recipe is unused, a placeholder for the shared machinery
        super().__init__(problem, Recipe(steps=0, lr=0.0), cache, key, test_index, chunk_size, progress)

    def method_key(self) -> dict[str, Any]:
        return {"pbrf": dataclasses.asdict(self.solver), "pbrf_version": PBRF_VERSION, "dtype": "float64"}

    @property
    def objective(self) -> BregmanObjective:
        if self._objective is None:
            self._objective = BregmanObjective(self.problem, self.solver.damping)
        return self._objective

    def reference(self) -> Reference:
        """``theta*`` itself: it minimises ``F`` with nothing removed, so there is no drift to subtract."""
        if self._reference is None:
            loss = float(self.objective.test_loss(self.objective.theta_star[None], self.test_index)[0])
            self._reference = Reference(loss, loss, self.objective.theta_star)
        return self._reference

    def choose_chunk_size(self, n_models: int) -> int:
        if self.chunk_size is None:
            self.chunk_size = max(1, min(n_models, DEFAULT_CHUNK))
        return self.chunk_size

    def respond(self, removed: list[int]) -> tuple[Tensor, Tensor, dict[str, list[Any]]]:
        """The solutions of ``F_m`` for each removed point (float64), their test losses, and per model the relative
        gradient norm reached and the Hessian-vector products spent (:class:`PbrfEffect`)."""
        objective = self.objective
        weights = removal_weights(removed, self.problem.n_train, torch.float64, self.problem.device)
        thetas, relative, products = objective.solve(weights, self.solver)
        unsolved = int((relative > self.solver.rtol).sum())
        if unsolved:
            log.warning(
                "PBRF: %d of %d models above the tolerance after %d Hessian-vector products (worst %.1e)",
                unsolved,
                len(removed),
                products,
                float(relative.max()),
            )
        extra = {"gradient_norm": relative.tolist(), "products": [products] * len(removed)}
        return thetas, objective.test_loss(thetas, self.test_index), extra


class ProximalGroundTruth(PbrfGroundTruth):
    """The proximal leave-one-out response (``--truth prox``): for removed point ``m``, the minimiser from ``theta*`` of
    the training objective without ``m`` plus the proximity term, ``J_-m(theta) + (lambda / 2) ||theta - theta*||^2``,
    solved as the PBRF is (float64, Newton-CG, to the same tolerance).

    It sits between leave-one-out re-trained from ``theta*`` and the PBRF in Bae et al.'s decomposition: against
    converged leave-one-out it adds the proximity term, and the PBRF then replaces each loss by its Bregman divergence
    around ``theta*`` (a linearisation of the network in its outputs' neighbourhood). ``theta*`` minimises it with
    nothing removed only where it is a stationary point of ``J``, so its reference is that solve (cached under
    ``prox-reference/``) and its drift, ``loss_test(reference) - loss_test(theta*)``, says how far from stationary the
    optimum was. On a model linear in ``theta`` at an exact optimum it equals the PBRF.
    """

    kind = "prox"
    title = "proximal leave-one-out"

    def method_key(self) -> dict[str, Any]:
        return {"prox": dataclasses.asdict(self.solver), "pbrf_version": PBRF_VERSION, "dtype": "float64"}

    @property
    def objective(self) -> BregmanObjective:
        if self._objective is None:
            self._objective = BregmanObjective(self.problem, self.solver.damping, bregman=False)
        return self._objective

    def reference(self) -> Reference:
        """The solve with nothing removed (from the cache, or solved now)."""
        if self._reference is not None:
            return self._reference
        objective = self.objective

        def solve_reference() -> dict[str, Tensor]:
            weights = torch.ones(1, self.problem.n_train, dtype=torch.float64, device=self.problem.device)
            return {"theta": objective.solve(weights, self.solver)[0][0]}

        theta = self.cache.tensors("prox-reference", self._entry_key("reference"), solve_reference)["theta"]
        theta = theta.to(device=self.problem.device, dtype=torch.float64)
        losses = objective.test_loss(torch.stack([theta, objective.theta_star]), self.test_index)
        self._reference = Reference(float(losses[0]), float(losses[1]), theta)
        return self._reference
