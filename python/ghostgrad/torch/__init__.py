"""ghostgrad for PyTorch models: attach to any ``nn.Module`` (:func:`attach`), and In-Run Data
Shapley inside an ordinary SGD training loop (:class:`InRunShapley`). See the README's PyTorch
section for the loop, :mod:`ghostgrad.torch.attach` for what is captured per layer kind, and
:mod:`ghostgrad.torch.inrun` for the formula and which optimizers are exact."""
from .attach import (Attached, Captured, Param, UncoveredParameterError, UnsupportedModuleError, Use, attach,
                     causal_lm_token_mask)
from .inrun import InRunShapley, UnsupportedOptimizerError, dense_query_dot, sgd_groups

__all__ = ["attach", "Attached", "Captured", "Param", "Use", "UncoveredParameterError", "UnsupportedModuleError",
           "causal_lm_token_mask", "InRunShapley", "UnsupportedOptimizerError", "dense_query_dot", "sgd_groups"]
