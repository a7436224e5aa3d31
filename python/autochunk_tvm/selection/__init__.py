"""Stage 3 of AutoChunk: choose which regions to chunk, and how finely (paper §3.4).

* :mod:`.budget` - budgets as users write them; the error for an unreachable one;
* :mod:`.estimate` - the memory a plan's build allocates, per binding;
* :mod:`.cost` - the fitted speed-loss model of a chunk step;
* :mod:`.select` - beam search with DP merging over the estimate-search-select loop.
"""

from .budget import BudgetUnreachableError, OverBudgetWarning, parse_budget
from .cost import CostModel, ModelTotals, StepFeatures, step_features
from .estimate import PlanEstimate, PlanEstimator
from .select import Selection, select_plan

__all__ = [
    "BudgetUnreachableError",
    "CostModel",
    "ModelTotals",
    "OverBudgetWarning",
    "PlanEstimate",
    "PlanEstimator",
    "Selection",
    "StepFeatures",
    "parse_budget",
    "select_plan",
    "step_features",
]
