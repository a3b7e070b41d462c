"""perturbglm: DESeq2-grade negative binomial DE for every perturbation of a CRISPR screen."""

__version__ = "0.1.0"

from .api import de  # noqa: E402
from .errors import InputError  # noqa: E402
from .result import Result  # noqa: E402

__all__ = ["de", "InputError", "Result", "__version__"]
