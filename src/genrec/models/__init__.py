"""genrec.models: recommenders. Each maps a batch of histories to scores over the catalog."""

from genrec.models.base import Recommender
from genrec.models.hstu import HSTU, HSTUConfig
from genrec.models.itemknn import ItemKNN, ItemKNNConfig
from genrec.models.popularity import Popularity, PopularityConfig
from genrec.models.sasrec import SASRec, SASRecConfig
from genrec.models.sequential import SequentialConfig, SequentialModel

BASELINES = {"popularity": (Popularity, PopularityConfig), "itemknn": (ItemKNN, ItemKNNConfig)}
SEQUENTIAL = {"sasrec": (SASRec, SASRecConfig), "hstu": (HSTU, HSTUConfig)}

__all__ = ["BASELINES", "HSTU", "SEQUENTIAL", "HSTUConfig", "ItemKNN", "ItemKNNConfig", "Popularity",
           "PopularityConfig", "Recommender", "SASRec", "SASRecConfig", "SequentialConfig", "SequentialModel"]
