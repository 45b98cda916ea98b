"""Data sets for the toolkit: locating, verifying and loading them, splits, batches, augmentation."""

from .augment import CIFAR10_MEAN, CIFAR10_STD, augment_cifar10
from .batches import BatchSampler, derive_seed
from .dataset import Dataset, load_dataset, to_float
from .errors import ChecksumError, DatasetNotFoundError
from .idx import read_idx, write_idx
from .locate import search_paths
from .registry import DATASETS, DatasetInfo, FileSpec, get_info
from .resample import downsample, downsample_images
from .splits import split_train_val

__all__ = [
    "BatchSampler",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "ChecksumError",
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "DatasetNotFoundError",
    "FileSpec",
    "augment_cifar10",
    "derive_seed",
    "downsample",
    "downsample_images",
    "get_info",
    "load_dataset",
    "read_idx",
    "search_paths",
    "split_train_val",
    "to_float",
    "write_idx",
]
