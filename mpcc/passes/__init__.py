"""Compiler passes, one module each, registered by name."""
from .registry import PASSES, UnknownPassError, get_pass, register_pass
from . import infer_visibility, fold_public, eliminate_dead_code, client_one_hot_embedding, check_no_secret_index  # noqa: F401
from . import fuse_tanh_gelu, lower_to_mpc, approximate, preset_exact, preset_mpcformer, preset_secformer, preset_puma  # noqa: F401
from . import preset_power, decompose_conv2d, fuse_masked_attention, fuse_rms_norm  # noqa: F401
from . import fuse_scaled_matmul, fuse_activation_linear, fuse_eager_attention, mask_client_inputs  # noqa: F401
from . import fuse_sibling_linears  # noqa: F401
from .lower_to_mpc import LoweringError
from .check_no_secret_index import SecretIndexError
from .pipeline import DEFAULT_PIPELINE, SECURE_PIPELINE, PassError, run_pipeline, secure_pipeline

__all__ = ["PASSES", "DEFAULT_PIPELINE", "get_pass", "register_pass", "run_pipeline", "PassError",
           "UnknownPassError", "SecretIndexError", "LoweringError", "SECURE_PIPELINE", "secure_pipeline"]
