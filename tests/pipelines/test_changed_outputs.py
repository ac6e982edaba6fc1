"""A published output whose files changed afterwards is not trusted: a cache hit checks every file's
size and modification time against the manifest, `llama2 verify` its bytes against the sha256,
and a reader that cannot decode a shard names it in one line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pyarrow as pa
import pytest

from operators.formats.damaged import DamagedShardError
from operators.formats.documents import DOCUMENTS_SCHEMA, write_table
from operators.formats.tokens import TOKENS_SCHEMA, TokenCorpus
from operators.stage_io import StageIO
from pipelines import registry
from pipelines.cli import main, user_error
from pipelines.dag import PipelineSpec, Selection
from pipelines.manifest import MANIFEST_NAME
from pipelines.runner import MissingUpstreamError, stage_statuses
from pipelines.verify import verify_outputs
from tests.pipelines.test_runner import ToyConfig, context, ran, run, toy


def published(workdir: Path, stage: str) -> Path:
    [output] = [p for p in (workdir / "artifacts" / "toy" / stage).iterdir() if (p / MANIFEST_NAME).is_file()]
    return output


def statuses() -> dict[str, tuple[str, str | None]]:
    return {s.name: (s.status, s.problem) for s in stage_statuses(toy(), context(ToyConfig()))}


def overwrite_keeping_size(path: Path) -> None:
    """Zeros over the middle of the file, as a bad disk or a stray writer leaves it."""
    data = bytearray(path.read_bytes())
    data[len(data) // 4: len(data) // 2] = bytes(len(data) // 2 - len(data) // 4)
    path.write_bytes(bytes(data))


def test_a_truncated_output_file_is_a_miss_said_in_one_line_and_made_again(workdir: Path, caplog) -> None:
    run()
    kept = published(workdir, "keep") / "kept.txt"
    original = kept.read_bytes()
    kept.write_bytes(original[:5])
    status, problem = statuses()["keep"]
    assert status == "changed" and str(kept) in problem and f"its manifest records {len(original)}" in problem
    with caplog.at_level(logging.WARNING, logger="pipelines.runner"):
        outcomes = run()
    assert ran(outcomes) == ["keep"]
    assert kept.read_bytes() == original
    [line] = [r.getMessage() for r in caplog.records if "changed" in r.getMessage()]
    assert line.startswith("keep:") and str(kept) in line


def test_a_same_size_overwrite_with_a_new_time_is_a_miss(workdir: Path) -> None:
    run()
    kept = published(workdir, "keep") / "kept.txt"
    original = kept.read_bytes()
    recorded = kept.stat().st_mtime_ns
    overwrite_keeping_size(kept)
    os.utime(kept, ns=(recorded + 10**9, recorded + 10**9))  # a second later: clear of the clock's granularity
    status, problem = statuses()["keep"]
    assert status == "changed" and str(kept) in problem and "was modified at" in problem
    assert ran(run()) == ["keep"]
    assert kept.read_bytes() == original


def test_a_missing_upstream_file_stops_a_stage_that_reads_it_naming_the_file(workdir: Path) -> None:
    run(ToyConfig(), Selection.ONLY, "source")
    lines = published(workdir, "source") / "lines.txt"
    lines.unlink()
    with pytest.raises(MissingUpstreamError, match=rf"'source'.*{lines} is missing.*`llama2 run toy --until keep`"):
        run(ToyConfig(), Selection.ONLY, "keep")


def test_a_truncated_manifest_is_not_done_names_the_file_and_the_run_makes_it_again(workdir: Path) -> None:
    run()
    manifest = published(workdir, "join") / MANIFEST_NAME
    manifest.write_bytes(manifest.read_bytes()[:40])
    status, problem = statuses()["join"]
    assert status == "changed" and problem.startswith(f"{manifest} is damaged")
    assert ran(run()) == ["join"]
    assert json.loads(manifest.read_text())["stage"] == "join"


def test_verify_finds_an_overwrite_that_kept_size_and_time(workdir: Path) -> None:
    run()
    lines = published(workdir, "source") / "lines.txt"
    recorded = lines.stat().st_mtime_ns
    overwrite_keeping_size(lines)
    os.utime(lines, ns=(recorded, recorded))
    assert statuses()["source"] == ("done", None)  # what a stat can see is unchanged
    verified = {v.stage: v.problems for v in verify_outputs(toy(), context(ToyConfig()))}
    assert verified["keep"] == [] and verified["join"] == []
    [problem] = verified["source"]
    assert problem.startswith(f"{lines} does not match the sha256")


@pytest.fixture
def toy_command(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`llama2 ... toy` builds the toy pipeline from its defaults."""
    monkeypatch.setattr(registry, "pipeline_specs", lambda: {"toy": PipelineSpec("toy", ToyConfig, "", toy)})
    return workdir


def llama2(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = main(["--quiet", *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out


def test_llama2_verify_exits_1_naming_a_damaged_file_and_0_once_it_is_made_again(toy_command: Path, capsys) -> None:
    [_, keep, _] = run()
    kept = keep.output_dir / "kept.txt"
    recorded = kept.stat().st_mtime_ns
    overwrite_keeping_size(kept)
    os.utime(kept, ns=(recorded, recorded))
    code, out = llama2(capsys, "verify", "toy")
    assert code == 1
    assert f"keep {keep.fingerprint}: {kept} does not match the sha256" in out
    assert "make keep again: llama2 run toy --from keep --force" in out
    assert llama2(capsys, "verify", "toy", "source")[0] == 0
    assert llama2(capsys, "verify", "toy", "keep")[0] == 1
    run(ToyConfig(), Selection.ONLY, "keep", force=True)
    code, out = llama2(capsys, "verify", "toy")
    assert code == 0 and "3 outputs verified, 0 damaged" in out


def test_llama2_stages_says_changed_and_why_for_a_damaged_manifest(toy_command: Path, capsys) -> None:
    [_, keep, _] = run()
    manifest = keep.output_dir / MANIFEST_NAME
    manifest.write_text("{")
    code, out = llama2(capsys, "stages", "toy")
    assert code == 0
    [row] = [line for line in out.splitlines() if line.startswith("keep ")]
    assert row.split()[2] == "changed"
    assert f"{manifest} is damaged" in out


def test_a_truncated_token_shard_is_one_line_naming_it_and_how_to_make_it_again(tmp_path: Path) -> None:
    output = tmp_path / "pretrain" / "tokenize" / "f00d"
    shard = output / "tokens" / "part-00000.arrow"
    shard.parent.mkdir(parents=True)
    table = pa.table({"id": ["a"], "source": ["s"], "tokens": [[1, 5, 6, 2]]}, schema=TOKENS_SCHEMA)
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_file(sink, TOKENS_SCHEMA) as writer:
        writer.write_table(table)
    (output / MANIFEST_NAME).write_text(json.dumps({"pipeline": "pretrain", "stage": "tokenize", "files": []}))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DamagedShardError) as raised:
        TokenCorpus.open([shard], seed=0, validation_fraction=0.0)
    message = str(raised.value)
    assert f"cannot read {shard}" in message and "\n" not in message
    assert "`llama2 verify pretrain tokenize`" in message and "`llama2 run pretrain --from tokenize --force`" in message


def test_a_damaged_shard_read_in_a_ray_task_is_a_user_error_naming_it(tmp_path: Path, ray_local) -> None:
    from operators.data.filter import FilterConfig, run_filter

    upstream = tmp_path / "pretrain" / "dedup" / "beef"
    shard = upstream / "documents" / "part-00000.parquet"
    texts = [f"document {i} says something quite ordinary about gardens and weather. " * 8 for i in range(500)]
    write_table(pa.table({"id": [str(i) for i in range(500)], "source": ["web"] * 500, "url": [None] * 500,
                          "text": texts, "metadata": ["{}"] * 500}, schema=DOCUMENTS_SCHEMA), shard)
    (upstream / MANIFEST_NAME).write_text(json.dumps({"pipeline": "pretrain", "stage": "dedup", "files": []}))
    overwrite_keeping_size(shard)
    (tmp_path / "out").mkdir()
    with pytest.raises(Exception) as raised:
        run_filter(FilterConfig(), StageIO(tmp_path / "out", {"documents": upstream}, stage="filter"))
    cause = user_error(raised.value)
    assert isinstance(cause, DamagedShardError)
    assert f"cannot read {shard}" in str(cause) and "`llama2 run pretrain --from dedup --force`" in str(cause)
