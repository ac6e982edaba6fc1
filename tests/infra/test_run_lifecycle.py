"""What a failed run says about its error: the error the stage's own code raised, in one line."""

from __future__ import annotations

import pytest

from infra.run_lifecycle import error_summary


def test_a_ray_tasks_error_is_named_by_the_exception_it_raised_not_the_wrapper(ray_local) -> None:
    @ray_local.remote
    def parse_shard() -> None:
        raise ValueError("shard part-00003.parquet has no 'text' column\nsee the ingest docs")

    with pytest.raises(Exception) as raised:
        ray_local.get(parse_shard.remote())
    assert type(raised.value).__name__ != "ValueError"  # Ray wraps it on the way to the driver
    assert error_summary(raised.value) == ("ValueError", "shard part-00003.parquet has no 'text' column")


def test_a_long_message_is_cut_to_a_tag_sized_line() -> None:
    kind, message = error_summary(RuntimeError("x" * 2000))
    assert kind == "RuntimeError" and len(message) == 500 and message.endswith("...")
