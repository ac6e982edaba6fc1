"""The datasets a stage run logs to MLflow: its upstream outputs and raw input files in, its own output out.

    input   django-4.2/django-docs-4.2.jsonl.gz   digest: size + mtime (or sha256)   profile: bytes, modified
    input   filter                                 digest: fingerprint   schema: columns   profile: rows, files
    output  dedup                                  digest: fingerprint   schema: columns   profile: rows, files

A stage output's digest is its fingerprint and its source the output directory's URI, so the
MLflow UI links runs through the data they share. MLflow 3.17 records datasets only as run
*inputs* (a run's outputs are logged models), so a stage's own output is logged as an input whose
`mlflow.data.context` tag is `output`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

INPUT, OUTPUT = "input", "output"
_DIGEST_LENGTH = 16  # MLflow keeps at most 36 characters of a digest


def table_schemas(root: Path) -> dict[str, list[list[str]]]:
    """Part -> [[column, Arrow type], ...] for the Parquet and Arrow IPC files of `root` (for the
    manifest): a folder ("documents/") by its first file, a file at the top ("clusters.parquet") by itself."""
    schemas: dict[str, list[list[str]]] = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.suffix in (".parquet", ".arrow") and p.is_file()):
        folder = path.parent.relative_to(root).as_posix()
        part = path.name if folder == "." else f"{folder}/"
        if part not in schemas and (schema := _file_schema(path)) is not None:
            schemas[part] = [[f.name, str(f.type)] for f in schema]
    return schemas


def _file_schema(path: Path) -> pa.Schema | None:
    try:
        if path.suffix == ".parquet":
            return pq.read_schema(path)
        with pa.memory_map(str(path)) as source:
            return ipc.open_file(source).schema
    except (pa.ArrowInvalid, OSError):
        return None


def stage_dataset(name: str, fingerprint: str, uri: str, manifest: Mapping[str, Any] | None = None) -> Dataset:
    """A stage output as an MLflow dataset: digest = fingerprint, source = the output's URI, with the
    schema and row counts its manifest records (none for a manifest that predates them)."""
    manifest = manifest or {}
    columns = [{"name": f"{part.rstrip('/')}/{column}", "type": kind}
               for part, fields in manifest.get("schema", {}).items() for column, kind in fields]
    schema = json.dumps({"mlflow_colspec": columns}) if columns else None
    return _dataset(name, fingerprint, uri, schema, _profile(manifest) or None)


def _profile(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What the UI's dataset drawer lists: the stage's output count in its unit, rows per table, files, bytes."""
    if not manifest:
        return {}
    files = manifest.get("files", [])
    profile: dict[str, Any] = {f"{manifest.get('unit', 'items')}_out": manifest.get("counts", {}).get("out", 0)}
    for part in manifest.get("schema", {}):
        profile[f"rows_in_{part}"] = sum(int(f.get("rows", 0)) for f in files
                                         if f["path"].startswith(part) and "/" not in f["path"][len(part):])
    profile |= {"files": len(files), "bytes": sum(int(f.get("bytes", 0)) for f in files)}
    return profile


def outside_datasets(identity: Any) -> list[Dataset]:
    """The files a stage read from outside the store, from its `outside_inputs` identity (entries such
    as [source, path, size, mtime_ns] or [path, sha256]), each as a dataset named source/file."""
    found = []
    for entry in _file_entries(identity):
        path = next(v for v in entry if isinstance(v, str) and Path(v).is_file())
        labels = [v for v in entry if isinstance(v, str) and v != path and not _is_sha256(v)]
        sha256 = next((v for v in entry if isinstance(v, str) and _is_sha256(v)), None)
        numbers = [v for v in entry if isinstance(v, int) and not isinstance(v, bool)]
        profile: dict[str, Any] = {}
        if sha256:
            digest, profile["sha256"] = sha256[:_DIGEST_LENGTH], sha256
        else:
            digest = hashlib.sha256(json.dumps(numbers).encode()).hexdigest()[:_DIGEST_LENGTH]
        if len(numbers) >= 1:
            profile["bytes"] = numbers[0]
        if len(numbers) >= 2:
            profile["modified"] = datetime.fromtimestamp(numbers[1] / 1e9, timezone.utc).isoformat(timespec="seconds")
        name = "/".join([*labels[:1], Path(path).name])
        found.append(_dataset(name, digest, Path(path).resolve().as_uri(), None, profile or None))
    return found


def _file_entries(value: Any) -> Iterator[list[Any]]:
    """Flat lists of scalars naming exactly one existing file, anywhere in `value`."""
    if isinstance(value, list) and value and all(not isinstance(v, (list, dict)) for v in value):
        paths = [v for v in value if isinstance(v, str) and ("/" in v or "\\" in v) and Path(v).is_file()]
        if len(paths) == 1:
            yield value
            return
    if isinstance(value, list):
        for item in value:
            yield from _file_entries(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _file_entries(item)


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _dataset(name: str, digest: str, uri: str, schema: str | None, profile: Mapping[str, Any] | None) -> Dataset:
    # MLflow creates its artifact dataset sources (local, s3, ...) at run time, so they are
    # resolved by URI; a local URI matches two of them ("" and "file" schemes), which it warns about.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        source = resolve_dataset_source(uri)
    return Dataset(name=name, digest=digest, source_type=source._get_source_type(), source=source.to_json(),
                   schema=schema, profile=json.dumps(profile) if profile else None)


def as_input(dataset: Dataset, context: str) -> DatasetInput:
    return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])


def log_stage_inputs(
    run_id: str, inputs: Mapping[str, tuple[str, str, Mapping[str, Any] | None]], outside_identity: Any = None
) -> None:
    """Upstream outputs (name -> fingerprint, uri, manifest) and the raw files a stage reads from
    outside the store (its `outside_inputs` identity) as `input` datasets of its run."""
    datasets = [as_input(d, INPUT) for d in outside_datasets(outside_identity)]
    datasets += [as_input(stage_dataset(name, fp, uri, manifest), INPUT) for name, (fp, uri, manifest) in inputs.items()]
    if datasets:
        MlflowClient().log_inputs(run_id, datasets=datasets)


def log_stage_output(run_id: str, name: str, fingerprint: str, uri: str, manifest: Mapping[str, Any]) -> None:
    """The stage's published output as its run's `output` dataset (logged once it exists)."""
    MlflowClient().log_inputs(run_id, datasets=[as_input(stage_dataset(name, fingerprint, uri, manifest), OUTPUT)])
