"""genrec.serve: versioned bundles and the in-process Recommender (the HTTP app builds on it)."""

from genrec.serve.bundle import export_bundle, load_manifest
from genrec.serve.recommender import Recommendation, Recommender

__all__ = ["Recommendation", "Recommender", "export_bundle", "load_manifest"]
