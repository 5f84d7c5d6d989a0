"""genrec.serve: versioned bundles and the in-process Recommender (the HTTP app builds on it)."""

from genrec.serve.bundle import export_bundle, load_manifest
from genrec.serve.recommender import DEADLINE, MODEL_ERROR, NO_HISTORY, Recommendation, Recommender

__all__ = ["DEADLINE", "MODEL_ERROR", "NO_HISTORY", "Recommendation", "Recommender", "export_bundle",
           "load_manifest"]
