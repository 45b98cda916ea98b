"""What each supported data set is: shape, classes, files, checksums and mirrors.

Checksums and mirrors are those of torchvision (torchvision/datasets/mnist.py and
cifar.py). The md5 of the decompressed IDX files (`raw_md5`) lets repacked copies
such as Debian's dataset-fashion-mnist, whose .gz files differ byte-wise from
the published ones, still be verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class FileSpec:
    """One published file: its name, the md5 of the file as published, and (for .gz) of its content."""

    name: str
    md5: str
    raw_md5: str | None = None

    @property
    def stem(self) -> str:
        """The name without a trailing .gz (the name of the decompressed file)."""
        return self.name.removesuffix(".gz")


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a data set.

    For format "idx", train_files and test_files are (images, labels). For
    "cifar10" they are the pickle batches, and `archive` is the tar.gz holding them
    under `archive_dir`.
    """

    name: str
    shape: tuple[int, int, int]
    classes: int
    format: Literal["idx", "cifar10"]
    train_files: tuple[FileSpec, ...]
    test_files: tuple[FileSpec, ...]
    train_size: int
    test_size: int
    urls: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    system_dirs: tuple[str, ...] = ()
    archive: FileSpec | None = None
    archive_dir: str | None = None
    debian_package: str | None = None
    homepage: str = ""

    @property
    def files(self) -> tuple[FileSpec, ...]:
        """Every data file, train first."""
        return self.train_files + self.test_files

    @property
    def downloads(self) -> tuple[FileSpec, ...]:
        """The files fetched from `urls`: the archive if there is one, else each data file."""
        return (self.archive,) if self.archive is not None else self.files

    def download_urls(self, spec: FileSpec) -> list[str]:
        """The URLs to try for one downloadable file, in order."""
        return [base + spec.name for base in self.urls]


FASHION_MNIST = DatasetInfo(
    name="fashion-mnist",
    shape=(1, 28, 28),
    classes=10,
    format="idx",
    train_files=(
        FileSpec("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        FileSpec("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
    ),
    test_files=(
        FileSpec("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
        FileSpec("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
    ),
    train_size=60000,
    test_size=10000,
    urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    aliases=("fmnist", "fashion_mnist", "fashionmnist"),
    system_dirs=("fashion-mnist",),
    debian_package="dataset-fashion-mnist",
    homepage="https://github.com/zalandoresearch/fashion-mnist",
)

MNIST = DatasetInfo(
    name="mnist",
    shape=(1, 28, 28),
    classes=10,
    format="idx",
    train_files=(
        FileSpec("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
        FileSpec("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    ),
    test_files=(
        FileSpec("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
        FileSpec("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
    ),
    train_size=60000,
    test_size=10000,
    urls=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    system_dirs=("mnist",),
    homepage="http://yann.lecun.com/exdb/mnist/",
)

CIFAR10 = DatasetInfo(
    name="cifar10",
    shape=(3, 32, 32),
    classes=10,
    format="cifar10",
    train_files=(
        FileSpec("data_batch_1", "c99cafc152244af753f735de768cd75f"),
        FileSpec("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
        FileSpec("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
        FileSpec("data_batch_4", "634d18415352ddfa80567beed471001a"),
        FileSpec("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
    ),
    test_files=(FileSpec("test_batch", "40351d587109b95175f43aff81a1287e"),),
    train_size=50000,
    test_size=10000,
    urls=("https://www.cs.toronto.edu/~kriz/",),
    aliases=("cifar-10", "cifar_10"),
    system_dirs=("cifar10", "cifar-10"),
    archive=FileSpec("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    archive_dir="cifar-10-batches-py",
    homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
)

DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (FASHION_MNIST, MNIST, CIFAR10)}


def get_info(name: str | DatasetInfo) -> DatasetInfo:
    """Look a data set up by name or alias, case-insensitively; a DatasetInfo passes through."""
    if isinstance(name, DatasetInfo):
        return name
    key = str(name).strip().lower()
    for info in DATASETS.values():
        if key == info.name.lower() or key in (alias.lower() for alias in info.aliases):
            return info
    valid = ", ".join(sorted(DATASETS))
    aliases = ", ".join(sorted(alias for info in DATASETS.values() for alias in info.aliases))
    raise ValueError(f"unknown data set {name!r}; valid names are {valid} (aliases: {aliases}), "
                     f"or 'idx' for your own IDX files in data.root")
