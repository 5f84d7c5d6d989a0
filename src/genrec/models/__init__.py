"""genrec.models: recommenders. Each maps a batch of histories to scores over the catalog."""

from genrec.models.base import Recommender
from genrec.models.content_knn import ContentKNN, ContentKNNConfig
from genrec.models.hstu import HSTU, HSTUConfig
from genrec.models.itemknn import ItemKNN, ItemKNNConfig
from genrec.models.popularity import Popularity, PopularityConfig
from genrec.models.sasrec import SASRec, SASRecConfig
from genrec.models.sequential import SequentialConfig, SequentialModel

BASELINES = {"popularity": (Popularity, PopularityConfig), "itemknn": (ItemKNN, ItemKNNConfig)}
SEQUENTIAL = {"sasrec": (SASRec, SASRecConfig), "hstu": (HSTU, HSTUConfig)}

# ContentKNN is not in BASELINES: BASELINES builds models from a config alone, and it also needs item embeddings.
__all__ = ["BASELINES", "HSTU", "SEQUENTIAL", "ContentKNN", "ContentKNNConfig", "HSTUConfig", "ItemKNN",
           "ItemKNNConfig", "Popularity", "PopularityConfig", "Recommender", "SASRec", "SASRecConfig",
           "SequentialConfig", "SequentialModel"]
