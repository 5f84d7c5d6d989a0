"""genrec.models: recommenders. Each maps a batch of histories to scores over the catalog."""

from genrec.models.base import Recommender
from genrec.models.itemknn import ItemKNN, ItemKNNConfig
from genrec.models.popularity import Popularity, PopularityConfig

BASELINES = {"popularity": (Popularity, PopularityConfig), "itemknn": (ItemKNN, ItemKNNConfig)}

__all__ = ["BASELINES", "ItemKNN", "ItemKNNConfig", "Popularity", "PopularityConfig", "Recommender"]
