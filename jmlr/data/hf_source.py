"""Question sets where users keep them with Hugging Face ``datasets``.

``data.train`` / ``data.dev`` / ``data.test``, ``eval.datasets.<name>`` and ``jmlr
check-data`` take, besides a file:

- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
  (``datasets.load_from_disk``);
- a folder of data files (``train.jsonl``, ``validation.parquet``, ``test.csv``...), read by
  ``datasets.load_dataset(folder)``, which names the splits from the file names;
- a hub dataset id (``GBaker/MedQA-USMLE-4-options-hf``), read by ``datasets.load_dataset``
  from the local cache when offline (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``); one not
  in the cache then stops at once with one line.

A location names its split after a colon (``GBaker/MedQA-USMLE-4-options-hf:test``); without
one, the split of the config key is taken (``data.dev`` tries ``validation``, ``dev``,
``valid``, ``val``). An existing file or folder always wins over a hub id of the same
spelling. Rows go through the same question readers as files do (``formats.py``), so an
error names the dataset and split, the row (1-based) and the field:
``GBaker/MedQA-USMLE-4-options-hf[train]:12: field 'label': index 7 is out of range 0-3``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jmlr.data.schema import MCQ
from jmlr.errors import DataError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
SPLIT_NAMES = {"train": ("train",), "dev": ("validation", "dev", "valid", "val"),
               "test": ("test",)}


@dataclass(frozen=True)
class DatasetSource:
    kind: str            # "saved" (save_to_disk), "folder" (data files) or "hub"
    location: str
    split: str | None    # asked for by the location, or None


DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")


def _saved(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _has_data_files(folder: Path) -> bool:
    """Whether ``load_dataset(folder)`` has data files to read (at the top or under data/)."""
    return any(path.suffix.lower() in DATA_SUFFIXES and path.is_file()
               for place in (folder, folder / "data") if place.is_dir() for path in place.iterdir())


def dataset_source(location: str) -> DatasetSource | None:
    """How ``location`` is read through ``datasets``; None for a file (or nothing at all, which
    the file readers report).

    >>> dataset_source("GBaker/MedQA-USMLE-4-options-hf:test")
    DatasetSource(kind='hub', location='GBaker/MedQA-USMLE-4-options-hf', split='test')
    >>> dataset_source("no/such/file.jsonl") is None
    True
    """
    if not location or location.startswith("pkg:"):
        return None
    path = Path(location).expanduser()
    if path.is_file():
        return None
    base, split = location, None
    if not path.exists() and ":" in location:
        base, _, split = location.rpartition(":")
    folder = Path(base).expanduser()
    if folder.is_dir():
        if _saved(folder):
            return DatasetSource("saved", str(folder), split or None)
        # a folder with nothing datasets reads is left to the file readers' message
        return DatasetSource("folder", str(folder), split or None) if _has_data_files(folder) else None
    if HUB_ID.match(base) and not Path(base).suffix:
        return DatasetSource("hub", base, split or None)
    return None


def offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def open_dataset(source: DatasetSource) -> Any:
    """The ``Dataset`` or ``DatasetDict`` a source names; DataError in one line otherwise."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if source.kind == "saved":
            return datasets.load_from_disk(source.location)
        if source.kind == "folder":
            return datasets.load_dataset(source.location)
        return datasets.load_dataset(source.location)
    except (ConnectionError, FileNotFoundError) as err:
        if source.kind == "hub":
            why = ("is not in the local datasets cache, and the hub is switched off "
                   "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if offline()
                   else f"cannot be read from the hub ({str(err).splitlines()[0]})")
            raise DataError(source.location, None, None,
                            f"no such file or folder; as a hub dataset id it {why}; load it "
                            "once online, or give a save_to_disk folder or a data file") from None
        raise DataError(source.location, None, None,
                        f"cannot be read by datasets ({str(err).splitlines()[0]})") from None
    except (ValueError, OSError) as err:
        raise DataError(source.location, None, None,
                        f"cannot be read by datasets ({str(err).splitlines()[0]})") from None


def choose_split(available: list[str], wanted: str | None, location: str) -> str:
    """The split of a DatasetDict to read: the one asked for, or the config key's.

    >>> choose_split(["train", "validation", "test"], "dev", "x")
    'validation'
    """
    if wanted in available:
        return wanted
    for name in SPLIT_NAMES.get(wanted or "", ()):
        if name in available:
            return name
    if wanted is None and len(available) == 1:
        return available[0]
    raise DataError(location, None, "split", f"no split {wanted!r} (it has "
                    f"{', '.join(available) or 'none'}); name one after a colon: "
                    f"{location}:{available[0] if available else 'train'}")


def splits_of(source: DatasetSource, wanted: str | None) -> Iterator[tuple[str, Any]]:
    """(split name, Dataset) for the split wanted, or every split when none is named."""
    import datasets

    opened = open_dataset(source)
    if isinstance(opened, datasets.Dataset):
        yield source.split or "data", opened
        return
    names = list(opened)
    if source.split is None and wanted is None:
        yield from ((name, opened[name]) for name in names)
        return
    name = choose_split(names, source.split or wanted, source.location)
    yield name, opened[name]


def rows(dataset: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based row number, row) of a Dataset, as the file readers yield lines."""
    yield from enumerate(dataset, start=1)


def label(source: DatasetSource, split: str) -> str:
    """What errors name as the "file" of a dataset's rows.

    >>> label(DatasetSource("hub", "a/b", None), "train")
    'a/b[train]'
    """
    return f"{source.location}[{split}]"


def load_questions_from(source: DatasetSource, fmt: str, format_options: dict[str, Any] | None,
                        split: str | None) -> list[MCQ]:
    """The questions of one split of a ``datasets`` source, read as files are."""
    found = list(splits_of(source, split))
    if len(found) != 1:
        names = [name for name, _ in found]
        raise DataError(source.location, None, "split", f"holds the splits {', '.join(names)}; "
                        f"name one after a colon: {source.location}:{names[0]}")
    name, dataset = found[0]
    return read_split(source, name, dataset, fmt, format_options)[0]


def read_split(source: DatasetSource, name: str, dataset: Any, fmt: str,
               format_options: dict[str, Any] | None) -> tuple[list[MCQ], str]:
    """(questions, their format) of one split, through the readers of ``formats.py``."""
    from jmlr.data.formats import check_format_name, format_of_keys, read_rows

    where = label(source, name)
    if fmt == "auto":
        fmt = format_of_keys(set(dataset.column_names), where)
    check_format_name(fmt, where)
    return read_rows(rows(dataset), where, fmt, format_options), fmt


def check_dataset(source: DatasetSource, fmt: str, format_options: dict[str, Any] | None
                  ) -> dict[str, Any]:
    """``jmlr check-data`` of a ``datasets`` source: each split (or the one named) read and
    summarised like a question file."""
    from jmlr.data.checking import summarise_questions

    splits = {}
    for name, dataset in splits_of(source, None):
        questions, found = read_split(source, name, dataset, fmt, format_options)
        splits[name] = summarise_questions(questions, found)
    return {"kind": "questions", "source": source.kind, "location": source.location,
            "splits": splits}
