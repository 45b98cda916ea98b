"""Finding a data set on disk, and downloading it into the user cache when missing.

Search order: the explicit root, $HWTOOLKIT_DATA, the user cache, then the
system directory where Debian's dataset-* packages install
(/usr/share/datasets/<name>). The first directory holding every file wins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .download import DownloadError, fetch_file
from .errors import DatasetNotFoundError
from .registry import DatasetInfo, FileSpec, get_info

ENV_VAR = "HWTOOLKIT_DATA"
SYSTEM_DATA_DIR = Path("/usr/share/datasets")


@dataclass(frozen=True)
class Location:
    """Where a complete copy was found: the directory and the path of each file by FileSpec.name.

    For CIFAR-10 read from its tar.gz, `files` is empty and `archive` is set.
    """

    directory: Path
    files: dict[str, Path] = field(default_factory=dict)
    archive: Path | None = None


def cache_dir(name: str | DatasetInfo) -> Path:
    """The user cache for one data set: ${XDG_CACHE_HOME:-~/.cache}/hwtoolkit/datasets/<name>."""
    info = get_info(name)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "hwtoolkit" / "datasets" / info.name


def search_paths(name: str | DatasetInfo, root: Path | str | None = None) -> list[Path]:
    """The directories searched for a data set, in order, without duplicates."""
    info = get_info(name)
    paths: list[Path] = []
    for base in (root, os.environ.get(ENV_VAR) or None):
        if base is not None:
            base = Path(base).expanduser()
            paths += [base, base / info.name]
    paths.append(cache_dir(info))
    paths += [SYSTEM_DATA_DIR / d for d in info.system_dirs]
    return list(dict.fromkeys(paths))


def locate(name: str | DatasetInfo, root: Path | str | None = None, download: bool = True) -> Location:
    """Find a complete copy of a data set, downloading it into the user cache if allowed.

    Raises DatasetNotFoundError listing every directory searched and how to get the data.
    """
    info = get_info(name)
    searched = search_paths(info, root)
    reports: list[str] = []
    for directory in searched:
        location, problem = _find_in(info, directory)
        if location is not None:
            return location
        reports.append(f"  {directory} ({problem})")
    if not download:
        raise _not_found(info, searched, reports, "download=False, so nothing was downloaded (download=True fetches it).")
    cache = cache_dir(info)
    try:
        for spec in info.downloads:
            if _present(cache, spec) is None:
                fetch_file(spec, info.download_urls(spec), cache)
    except DownloadError as error:
        raise _not_found(info, searched, reports, f"Download failed: {error}.") from error
    location, problem = _find_in(info, cache)
    if location is None:
        raise _not_found(info, searched, reports, f"After downloading, {cache} is still incomplete ({problem}).")
    return location


def _present(directory: Path, spec: FileSpec) -> Path | None:
    """The stored path of one file: as published, or decompressed for .gz files."""
    for candidate in dict.fromkeys((spec.name, spec.stem)):
        path = directory / candidate
        if path.is_file():
            return path
    return None


def _find_in(info: DatasetInfo, directory: Path) -> tuple[Location | None, str]:
    """A Location if `directory` holds the whole data set, else (None, what is missing)."""
    if not directory.is_dir():
        return None, "does not exist"
    folders = [directory / info.archive_dir, directory] if info.archive_dir else [directory]
    for folder in folders:
        files = {spec.name: _present(folder, spec) for spec in info.files}
        if all(files.values()):
            return Location(folder, files), ""  # type: ignore[arg-type]
    if info.archive is not None:
        archive = _present(directory, info.archive)
        if archive is not None:
            return Location(directory, archive=archive), ""
    if info.archive is not None:
        return None, f"missing {info.archive.name} and a complete {info.archive_dir}/"
    return None, "missing " + ", ".join(_describe(spec) for spec in info.files if _present(directory, spec) is None)


def _describe(spec: FileSpec) -> str:
    return f"{spec.stem}[.gz]" if spec.name.endswith(".gz") else spec.name


def _not_found(info: DatasetInfo, searched: list[Path], reports: list[str], reason: str) -> DatasetNotFoundError:
    urls = [url for spec in info.downloads for url in info.download_urls(spec)[:1]]
    how = [f"- download {', '.join(urls)} into {cache_dir(info)}"]
    if info.debian_package:
        how.insert(0, f"- install the Debian package {info.debian_package} (apt-get install {info.debian_package})")
    how.append(f"- or set {ENV_VAR} to a directory holding the files (directly or under <dir>/{info.name})")
    message = "\n".join(
        [f"data set {info.name!r} not found. Searched, in order:", *reports, reason, "To get it:", *how]
    )
    return DatasetNotFoundError(message, searched)
