"""``datainf``: the closed-form, layer-wise inverse of the empirical Fisher, inverting each training example's rank-one
term and averaging the inverses (Kwon, Wu, Wu & Zou, "DataInf: Efficiently Estimating Data Influence in LoRA-tuned
LLMs and Diffusion Models", ICLR 2024)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from benchmark import LAYERS, Estimator, EstimatorFailed, Problem, ScopedEstimator, hookimpl, non_negative, positive

BLOCKS = ("tensor", "module")


@dataclasses.dataclass
class DataInfConfig:
    """Hyperparameters of :class:`DataInf`.

    Attributes:
        damping_scale: ``c`` in the paper's per-block damping ``lambda_l = c * mean_i ||g_il||^2 / d_l`` (the mean
            squared entry of the block's per-example gradients); 0.1 as in the paper and its reference code
            (``lambda_const_param = 10`` there, a divisor).
        layers: ``all`` blocks, or ``last``: only the blocks of the model's last module (``2.weight`` and ``2.bias``);
            the iHVP is zero on every other parameter, so those contribute no influence
            (:class:`~benchmark.ScopedEstimator`).
        chunk_size: training examples whose per-example gradients are held at once (memory ``chunk_size x P``).
        blocks: ``tensor``: one block per parameter tensor, as the paper's reference code; ``module``: one per module,
            its weight and bias together (the parameters whose names share the prefix before the final dot), as
            dattri's ``IFAttributorDataInf``.
        fixed_damping: when positive, ``lambda_l = fixed_damping + weight_decay`` for every block, an absolute value
            as dattri's ``regularization``, instead of the paper's relative rule (``damping_scale`` is then unused).
    """

    damping_scale: float = 0.1
    layers: str = dataclasses.field(default="all", metadata={"choices": LAYERS})
    chunk_size: int = 256
    blocks: str = dataclasses.field(default="tensor", metadata={"choices": BLOCKS})
    fixed_damping: float = 0.0

    def __post_init__(self) -> None:
        positive(damping_scale=self.damping_scale, chunk_size=self.chunk_size)
        non_negative(fixed_damping=self.fixed_damping)


class DataInf(ScopedEstimator):
    """Block-diagonal iHVP with each block's inverse in closed form, by swapping inversion and averaging (DataInf).

    **Blocks.** By default one block per named parameter tensor (a ``Linear``'s weight and its bias are two blocks), as
    the reference implementation treats each LoRA weight tensor; ``blocks: module`` joins a module's tensors, as
    dattri does. ``H`` is taken as block-diagonal.

    **Per block** ``l`` of size ``d_l``, with ``g_il`` the block of training example ``i``'s loss gradient, ``H``'s
    block is approximated by the empirical Fisher ``G_l = (1/n) sum_i g_il g_il^T`` plus ``lambda_l I``, and its
    inverse by the mean of the rank-one terms' inverses (Sherman-Morrison, exact for ``n = 1``)::

        (G_l + lambda_l I)^-1 v  ~  (1/(n lambda_l)) sum_i ( v - (g_il^T v) g_il / (lambda_l + ||g_il||^2) )

    **Damping.** ``lambda_l = damping_scale * mean_i ||g_il||^2 / d_l + weight_decay``. The first term is the paper's
    rule, which its reference code computes as ``mean_i mean(g_il ** 2) / 10``; the problem's ``weight_decay`` is added
    because it is part of this harness's objective, whose Hessian is ``(1/n) sum_i H_i + weight_decay I`` (it is zero
    in the paper's setting). ``fixed_damping`` replaces the first term by one absolute value for every block (dattri's
    form). The damping is per block and, by default, relative to the gradients' scale, so this estimator declares
    no :attr:`~benchmark.Estimator.damping_field`: a task's protocol damping (an absolute ``lambda`` shared by every
    parameter) does not apply to it, and its iHVP residual is measured against the undamped ``H^-1``, as for
    ``first-order``.

    Cost: one pass over the per-example training gradients to prepare (the ``lambda_l`` and every ``||g_il||^2``),
    and one more per :meth:`ihvp` call, for all its right-hand sides together; memory ``chunk_size x P`` plus
    ``n x`` blocks. Fails when a kept block's ``lambda_l`` is zero (its gradients all vanish and there is no weight
    decay). Diagnostics: ``lambda_l`` of each kept block, by parameter name.
    """

    name = "datainf"
    Config = DataInfConfig

    def prepare_scope(self, problem: Problem) -> None:
        names = list(problem.params)  # the order of the flat theta
        sizes = [problem.params[name].numel() for name in names]
        offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        groups: dict[str, list[int]] = {}  # block name -> its tensors, consecutive in theta
        for k, name in enumerate(names):
            groups.setdefault(name if self.config.blocks == "tensor" else name.rpartition(".")[0], []).append(k)
        self._blocks = [(block, slice(offsets[ks[0]], offsets[ks[-1]] + sizes[ks[-1]])) for block, ks in groups.items()]
        self._squared_norms = torch.empty(problem.n_train, len(self._blocks), dtype=torch.float64)
        for rows, gradients in problem.iter_train_gradients(self.config.chunk_size):
            for b, (_, block) in enumerate(self._blocks):
                self._squared_norms[rows, b] = gradients[:, block].double().square().sum(dim=1).cpu()
        sizes_kept = torch.tensor([block.stop - block.start for _, block in self._blocks], dtype=torch.float64)
        if self.config.fixed_damping > 0:
            self._lambdas = torch.full((len(self._blocks),), self.config.fixed_damping, dtype=torch.float64)
        else:
            self._lambdas = self.config.damping_scale * self._squared_norms.mean(dim=0) / sizes_kept
        self._lambdas = self._lambdas + problem.weight_decay
        self.diagnostics = {"lambdas": {name: float(value) for (name, _), value in zip(self._blocks, self._lambdas)}}
        for (name, _), value in zip(self._blocks, self._lambdas):
            if not float(value) > 0:
                raise EstimatorFailed(
                    f"block {name!r} has lambda_l = {float(value):.3g}: its training gradients vanish"
                )

    def scope_ihvp(self, vectors: Tensor) -> Tensor:
        problem = self.scope
        # (1/n) sum_i (g_il^T v) g_il / (lambda_l + ||g_il||^2), accumulated block by block over chunks of examples
        corrections = torch.zeros_like(vectors)
        for rows, gradients in problem.iter_train_gradients(self.config.chunk_size):
            for b, (_, block) in enumerate(self._blocks):
                g = gradients[:, block]
                denominators = (self._lambdas[b] + self._squared_norms[rows, b]).to(vectors)
                corrections[:, block] += ((vectors[:, block] @ g.T) / denominators) @ g
        out = torch.zeros_like(vectors)
        for b, (_, block) in enumerate(self._blocks):
            lam = float(self._lambdas[b])
            out[:, block] = (vectors[:, block] - corrections[:, block] / problem.n_train) / lam
        return out


@hookimpl
def bench_estimators() -> list[type[Estimator]]:
    return [DataInf]
