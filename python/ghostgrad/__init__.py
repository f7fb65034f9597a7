"""ghostgrad: gradient-based data attribution from the factors of per-sample gradients.

In-Run Data Shapley, LoGra influence and data value embeddings all reduce to algebra on
per-sample gradients of linear layers ``G_n = Σ_t b_{n,t} a_{n,t}ᵀ``; ghostgrad computes it from
the factors (the layer inputs and output gradients of one backward pass) with hand-written CUDA
kernels or its CPU backends, never materializing ``G_n`` unless its cost model says so.

Arrays are any DLPack array (torch, numpy, JAX, CuPy) on the CPU or a CUDA device, taken
without a copy; outputs are written into ``out=`` or allocated in the input's framework and on
its device. On CUDA arrays work is enqueued on the framework's current stream (or ``stream=``)
and nothing synchronizes. ``backend=`` picks ``"cpu"`` (default on host arrays, fast f32),
``"reference"`` (float64 loops, for checking) or ``"interp"`` (the CUDA kernels on the PTX
interpreter, host arrays copied in and out: for tests).
"""

from . import errors
from .errors import (
    CudaError,
    DeviceError,
    DTypeError,
    Error,
    InternalError,
    InvalidArgument,
    KernelsNotBuilt,
    OutOfMemory,
    ShapeError,
)
from .types import (
    DotLayer,
    DvembReport,
    Embedding,
    Factors,
    FormChoice,
    FormCost,
    GhgUse,
    LayerUse,
    Linear,
    Norm,
    ParamProjection,
    ProjectLayer,
    Projection,
    TermChoice,
)
from .layers import Output, factored_grad, ghost_dot, ghost_dot_dense, ghost_dot_layers, ghost_gram, ghost_sqnorm
from .model import model_dot, model_ghg, model_gram, model_sqnorm
from .projection import (
    accumulate_values,
    dvemb_layers,
    dvemb_scores,
    ekfac_eigen_correction,
    influence_scores,
    influence_scores_groups,
    kfac_covariances,
    kfac_covariances_model,
    kron_project,
    kron_project_embedding,
    kron_project_layers,
    kron_project_model,
    projected_fisher,
    projection_matrix,
)
from .precondition import Kfac, RawFisher
from ._core import clear_context_cache
from . import _native

__version__ = _native.__version__
KERNELS_BUILT: bool = _native.KERNELS_BUILT

__all__ = [
    "Error", "InvalidArgument", "ShapeError", "DTypeError", "DeviceError", "KernelsNotBuilt", "CudaError", "OutOfMemory", "InternalError",
    "Linear", "Embedding", "Norm", "Factors", "LayerUse", "GhgUse", "DotLayer", "Projection", "ParamProjection", "ProjectLayer",
    "FormChoice", "FormCost", "TermChoice", "DvembReport", "Output",
    "ghost_dot", "ghost_dot_layers", "ghost_dot_dense", "factored_grad", "ghost_gram", "ghost_sqnorm",
    "model_dot", "model_gram", "model_sqnorm", "model_ghg",
    "kron_project", "kron_project_embedding", "kron_project_layers", "kron_project_model", "projection_matrix",
    "kfac_covariances", "kfac_covariances_model", "projected_fisher", "ekfac_eigen_correction",
    "influence_scores", "influence_scores_groups", "dvemb_layers", "dvemb_scores", "accumulate_values",
    "RawFisher", "Kfac", "clear_context_cache", "KERNELS_BUILT",
]
