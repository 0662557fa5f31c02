"""Columnar dataset files, as Hugging Face datasets are kept on disk: Parquet and Arrow.

``dataset: {format: parquet | arrow, path: FILE or FOLDER, fields: {...}}``. A folder is read file by
file in name order (recursively): ``*.parquet`` files (a hub snapshot's ``data/train-00000-of-00003.parquet``)
or ``*.arrow`` files (what ``Dataset.save_to_disk`` writes; Arrow IPC streams, or IPC files). Nothing is
fetched: the files must be local. Rows come out as plain dicts, column name to value, in file order;
:mod:`loadgen.workload.files` maps the columns (``fields``) and checks each row.

pyarrow reads them; it is the optional extra ``pip install 'loadgen[datasets]'``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loadgen.errors import ConfigError

_BATCH_ROWS = 4096


def table_files(fmt: str, path: Path) -> list[Path]:
    """The files ``path`` names: itself, or a folder's ``*.parquet`` / ``*.arrow`` files in name order."""
    if path.is_dir():
        found = sorted(p for p in path.rglob(f"*.{fmt}") if p.is_file())
        if not found:
            raise ConfigError(f"dataset folder {path} holds no *.{fmt} file; give a {fmt} file or a folder "
                              f"of them as dataset.path (or another dataset.format).")
        return found
    if not path.is_file():
        raise ConfigError(f"dataset file {path}: no such file or folder. Check dataset.path.")
    return [path]


def read_rows(fmt: str, path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for every row of ``path``'s files; ``where`` names the file and row for errors."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"dataset.format {fmt} needs pyarrow: pip install 'loadgen[datasets]' (or give "
                          "a jsonl or csv file).") from None
    for file in table_files(fmt, path):
        try:
            if fmt == "parquet":
                batches = pq.ParquetFile(file).iter_batches(batch_size=_BATCH_ROWS)
            else:
                batches = iter(_arrow_table(pa, file).to_batches(max_chunksize=_BATCH_ROWS))
            row = 0
            for batch in batches:
                for obj in batch.to_pylist():
                    row += 1
                    yield f"dataset file {file}, row {row}", obj
        except (OSError, pa.ArrowException) as exc:
            raise ConfigError(f"dataset file {file}: not a readable {fmt} file ({exc}).") from None


def _arrow_table(pa: Any, file: Path) -> Any:
    """An Arrow IPC stream (``datasets``' own layout) or IPC file, memory-mapped."""
    with pa.memory_map(str(file)) as source:
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_file(source).read_all()


def columns(fmt: str, path: Path) -> list[str]:
    """The column names of the first file (for error messages that list what there is)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    first = table_files(fmt, path)[0]
    if fmt == "parquet":
        return list(pq.ParquetFile(first).schema_arrow.names)
    return list(_arrow_table(pa, first).schema.names)
