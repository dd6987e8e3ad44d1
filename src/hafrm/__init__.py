"""hafrm: train, evaluate and serve LLM reward models with the Hybrid Alignment Framework.

Shape notation used throughout: `B` pairs; `2B` stacked sequences (chosen rows first, then
rejected); `T` tokens; `H` hidden size; `V` vocabulary size.
"""

__version__ = "0.1.0"

from hafrm.apps.export import export_model  # noqa: E402
from hafrm.config import MODES, SELECTION_METRICS, HafConfig  # noqa: E402
from hafrm.data.types import PreferencePair  # noqa: E402
from hafrm.errors import ConfigError, DataError, HafError  # noqa: E402
from hafrm.evaluation.scoring import RewardModel, load  # noqa: E402
from hafrm.modeling.hybrid import HybridOutput, HybridRewardModel  # noqa: E402
from hafrm.objectives.losses import POLICY_LOSSES, PolicyLogps, bradley_terry_loss  # noqa: E402


def train(cfg: HafConfig):
    """Run a training job (see `hafrm.training.recipe.train`)."""
    from hafrm.training.recipe import train as _train

    return _train(cfg)


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
    "RewardModel",
    "bradley_terry_loss",
    "export_model",
    "load",
    "train",
]
