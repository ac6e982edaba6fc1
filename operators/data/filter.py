"""The `filter` stage: drop PII-heavy sites and low-quality documents, redact PII, score toxicity.

Per document, in this order (the first rule that fires is the reason recorded in rejects):

    url host in pii.remove_domains   -> rejects, reason "pii_domain"          (Llama 2 §2.1)
    a quality rule fails             -> rejects, reason "quality:<rule>"      (Gopher / C4)
    otherwise kept: emails, phone numbers, IPs redacted -> pii_redactions     (Llama 2 §2.1)
                    toxicity scored, never used to drop -> toxicity           (Llama 2 §4.1)

Quality rules see the original text; redaction only touches documents that are kept. One Ray
task per input shard; shard i of the input becomes `documents/part-i` and `rejects/part-i`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field

from operators.formats.damaged import decoding
from operators.formats.documents import document_shards, rejects_table, write_table
from operators.data.pii import PII_KINDS, PiiConfig, matching_domain, redact_pii
from operators.data.quality_filter import QualityConfig, quality_reject_reason
from operators.stage_io import InputRows, MissingInputError, StageIO, StageStats
from operators.data.toxicity import ToxicityConfig, ToxicityScorer, build_scorer

log = logging.getLogger(__name__)

class FilterConfig(BaseModel):
    """Config of the filter stage."""

    model_config = ConfigDict(extra="forbid")

    quality: QualityConfig = Field(default_factory=QualityConfig, description="Gopher/C4 quality rules.")
    pii: PiiConfig = Field(default_factory=PiiConfig, description="PII-heavy domains and redaction.")  # §2.1
    toxicity: ToxicityConfig = Field(
        default_factory=ToxicityConfig, description="Toxicity scorer (score kept as a column, never drops)."
    )  # §4.1
    keep_rejected_text: bool = Field(
        True,
        description="Store each dropped document, as JSON, in the rejects' `record` column "
        "(without its text when it was dropped as pii_domain).",
    )


def filter_documents(
    table: pa.Table, cfg: FilterConfig, scorer: ToxicityScorer, stage: str
) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """Split one shard of documents into (kept, rejects, stats). Pure: no I/O, no Ray."""
    rows = table.to_pylist()
    keep = np.zeros(len(rows), bool)
    kept_texts: list[str] = []
    redactions: list[int] = []
    pii_counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    rejects: list[dict[str, Any]] = []

    for i, row in enumerate(rows):
        text = row["text"] or ""
        reason = "pii_domain" if matching_domain(row.get("url"), cfg.pii.remove_domains) else None
        reason = reason or quality_reject_reason(text, cfg.quality)
        if reason is None:
            keep[i] = True
            redacted, counts = redact_pii(text, cfg.pii)
            kept_texts.append(redacted)
            redactions.append(sum(counts.values()))
            pii_counts.update(counts)
            continue
        reasons[reason] += 1
        # A page from a PII-heavy site is kept out of rejects too: its record loses the text.
        kept_fields = {k: v for k, v in row.items() if not (reason == "pii_domain" and k == "text")}
        record = json.dumps(kept_fields, ensure_ascii=False) if cfg.keep_rejected_text else None
        rejects.append({"id": row["id"], "source": row["source"], "reason": reason, "record": record})

    kept = table.filter(pa.array(keep))
    text_col = kept.schema.get_field_index("text")
    kept = kept.set_column(text_col, kept.schema.field(text_col), pa.array(kept_texts, pa.string()))
    toxicity = scorer.score(kept_texts).astype(np.float32)
    kept = kept.append_column(pa.field("toxicity", pa.float32(), nullable=False), pa.array(toxicity))
    kept = kept.append_column(
        pa.field("pii_redactions", pa.int32(), nullable=False), pa.array(redactions, pa.int32())
    )

    stats = {
        "in": len(rows),
        "out": int(keep.sum()),
        "reasons": dict(reasons),
        "pii": {kind: pii_counts.get(kind, 0) for kind in PII_KINDS},
        "documents_with_pii": sum(1 for r in redactions if r),
        "toxicity_sum": float(toxicity.sum(dtype=np.float64)),
        "toxicity_max": float(toxicity.max(initial=0.0)),
        "toxicity_nonzero": int(np.count_nonzero(toxicity)),
        "scorer": scorer.name,
        "bytes_in": sum(len((r["text"] or "").encode("utf-8")) for r in rows),
    }
    return kept, rejects_table(rejects, stage), stats


@ray.remote(num_cpus=1)
def _filter_shard(src: str, docs_out: str, rejects_out: str, cfg: FilterConfig, stage: str) -> dict[str, Any]:
    with decoding(src):
        documents = pq.read_table(src)
    kept, rejects, stats = filter_documents(documents, cfg, build_scorer(cfg.toxicity), stage)
    stats["written"] = write_table(kept, Path(docs_out))
    stats["rejects_written"] = write_table(rejects, Path(rejects_out))
    return stats


def _merge(stats: list[dict[str, Any]]) -> dict[str, Any]:
    reasons: Counter[str] = Counter()
    pii: Counter[str] = Counter()
    for s in stats:
        reasons.update(s["reasons"])
        pii.update(s["pii"])
    total = {key: sum(s[key] for s in stats) for key in ("in", "written", "rejects_written", "documents_with_pii", "bytes_in")}
    total["toxicity_mean"] = sum(s["toxicity_sum"] for s in stats) / max(total["written"], 1)
    total["toxicity_max"] = max((s["toxicity_max"] for s in stats), default=0.0)
    total["toxicity_nonzero"] = sum(s["toxicity_nonzero"] for s in stats)
    total["reasons"] = dict(sorted(reasons.items()))
    total["pii"] = {kind: pii.get(kind, 0) for kind in PII_KINDS}
    total["scorer"] = stats[0]["scorer"] if stats else None
    return total


def reasons_figure(reasons: dict[str, int], pii: dict[str, int], kept: int) -> Figure:
    """Documents kept and dropped by rule, and PII redactions by kind."""
    fig = Figure(figsize=(8, 0.35 * (len(reasons) + len(pii)) + 2.5), layout="constrained")
    ax_r, ax_p = fig.subplots(2, 1, height_ratios=[max(len(reasons), 1) + 1, len(pii)])
    by_count = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    labels = ["kept", *(r for r, _ in by_count)]
    values = [kept, *(n for _, n in by_count)]
    ax_r.barh(labels, values, color=["tab:green"] + ["tab:red"] * len(reasons))
    ax_r.invert_yaxis()
    ax_r.set_title("filter: documents kept and dropped, by rule")
    ax_r.set_xlabel("documents")
    for y, v in enumerate(values):
        ax_r.annotate(str(v), (v, y), xytext=(3, 0), textcoords="offset points", va="center")
    ax_p.barh(list(pii), list(pii.values()), color="tab:blue")
    ax_p.invert_yaxis()
    ax_p.set_title("PII redactions in kept documents, by kind")
    ax_p.set_xlabel("matches replaced")
    return fig


def run_filter(config: FilterConfig, io: StageIO) -> StageStats:
    """Filter the `documents` input into `documents/` and `rejects/` (see module doc)."""
    start = time.perf_counter()
    shards = document_shards(io)
    build_scorer(config.toxicity)  # fail fast on an unloadable scorer, before launching tasks
    for sub in ("documents", "rejects"):
        (io.output_dir / sub).mkdir(parents=True, exist_ok=True)
    refs = [
        _filter_shard.remote(
            str(src),
            str(io.output_dir / "documents" / f"part-{i:05d}.parquet"),
            str(io.output_dir / "rejects" / f"part-{i:05d}.parquet"),
            config,
            io.stage,
        )
        for i, src in enumerate(shards)
    ]
    total = _merge(ray.get(refs))
    wall = time.perf_counter() - start
    log.info("filter: %d in, %d kept, %d dropped %s", total["in"], total["written"], sum(total["reasons"].values()),
             total["reasons"])
    io.tracker.log_figure(reasons_figure(total["reasons"], total["pii"], total["written"]), "plots/filter_reasons.png")

    metrics: dict[str, float] = {
        "throughput/mb_per_s": total["bytes_in"] / 1e6 / wall,
        "pii/documents_with_pii": total["documents_with_pii"],
        "toxicity/mean": total["toxicity_mean"],
        "toxicity/max": total["toxicity_max"],
    }
    metrics |= {f"pii/{kind}": n for kind, n in total["pii"].items()}
    return StageStats(
        unit="documents",
        count_in=total["in"],
        count_out=total["written"],
        rejected=total["reasons"],
        inputs_read=(InputRows("documents", "documents/", total["in"]),),
        output_rows={"documents/": total["written"], "rejects/": total["rejects_written"]},
        metrics=metrics,
        summary={
            "pii_redactions": total["pii"],
            "documents_with_pii": total["documents_with_pii"],
            "toxicity": {
                "scorer": total["scorer"],
                "mean": total["toxicity_mean"],
                "max": total["toxicity_max"],
                "documents_above_zero": total["toxicity_nonzero"],
                "used_to_drop": False,
            },
        },
    )


def lexicon_file(config: FilterConfig) -> list[Any] | None:
    """Identity of a user-supplied toxicity lexicon (path, size, mtime): it is read from outside the store."""
    path = config.toxicity.lexicon_path
    if path is None:
        return None
    if not Path(path).is_file():
        raise MissingInputError(f"filter.toxicity.lexicon_path: no such file {path}")
    stat = Path(path).stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]
