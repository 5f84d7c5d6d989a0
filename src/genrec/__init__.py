"""genrec: generative recommendation, end to end."""

from genrec.errors import GenrecError

__version__ = "0.1.0"
__all__ = ["GenrecError", "__version__"]
