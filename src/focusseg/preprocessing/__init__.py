"""Raw cases -> preprocessed, memory-mappable arrays (crop, normalise, resample) with foreground indices."""

from focusseg.preprocessing.preprocess import preprocess_array, preprocess_dataset
from focusseg.preprocessing.store import PreprocessedStore

__all__ = ["PreprocessedStore", "preprocess_array", "preprocess_dataset"]
