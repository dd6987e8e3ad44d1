"""hafrm: train, evaluate and serve LLM reward models with the Hybrid Alignment Framework.

Shape notation used throughout: `B` pairs; `2B` stacked sequences (chosen rows first, then
rejected); `T` tokens; `H` hidden size; `V` vocabulary size.
"""

from hafrm.apps.export import export_model
from hafrm.config import MODES, SELECTION_METRICS, HafConfig
from hafrm.data.types import PreferencePair
from hafrm.errors import ConfigError, DataError, HafError
from hafrm.evaluation.scoring import RewardModel, load
from hafrm.modeling.hybrid import HybridOutput, HybridRewardModel
from hafrm.objectives.losses import POLICY_LOSSES, PolicyLogps, bradley_terry_loss
from hafrm.rlhf.config import RLHFConfig
from hafrm.rlhf.run import RLHFResult, compare_rlhf, run_rlhf
from hafrm.training.recipe import TrainResult, train
from hafrm.version import __version__

__all__ = [
    "MODES",
    "POLICY_LOSSES",
    "SELECTION_METRICS",
    "ConfigError",
    "DataError",
    "HafConfig",
    "HafError",
    "HybridOutput",
    "HybridRewardModel",
    "PolicyLogps",
    "PreferencePair",
    "RLHFConfig",
    "RLHFResult",
    "RewardModel",
    "TrainResult",
    "bradley_terry_loss",
    "compare_rlhf",
    "export_model",
    "load",
    "run_rlhf",
    "train",
    "__version__",
]
