"""`llama2 annotate`: the admin's login links, and every mistake named in one line with exit code 2 before
Ray starts."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from operators.annotate.annotators import annotator_of
from pipelines.cli import main

ROUNDS = """
rlhf:
  rounds:
    - {method: rejection_sampling}
    - method: rejection_sampling+ppo
      preferences:
        - {name: ratings_v2, paths: [%s]}
"""


@pytest.fixture
def config(tmp_path, monkeypatch):
    """Writes the rounds config; the command may not start or join Ray in these tests."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("infra.ray_runtime.ensure_ray", _no_ray)

    def write(paths: str = '"ratings_v2.jsonl"') -> str:
        path = tmp_path / "rounds.yaml"
        path.write_text(ROUNDS % paths)
        return str(path)

    return write


def test_add_annotator_prints_a_login_link_whose_token_logs_that_annotator_in(config, tmp_path, capsys):
    assert main(["annotate", "--round", "2", "--config", config(), "--port", "8123", "--add-annotator", "ana"]) == 0
    link = urlparse(capsys.readouterr().out.strip())
    assert (link.hostname, link.port, link.path) == ("127.0.0.1", 8123, "/login")
    token = parse_qs(link.query)["token"][0]
    assert annotator_of(tmp_path / "ratings_v2.jsonl.annotators.json", token) == "ana"


@pytest.mark.parametrize(("args", "paths", "says"), [
    (["--round", "3"], '"r.jsonl"', "--round 3: the config has 2 RLHF round(s) (rlhf.rounds)"),
    (["--round", "1"], '"r.jsonl"', "round 1 has no batch of its own to rate: add to rlhf.rounds[0].preferences"),
    (["--round", "2"], '"a.jsonl", "b.jsonl"', "annotate writes one JSON-lines file, and round 2's batch names"),
    (["--round", "2"], '"r-*.jsonl"', "annotate writes one JSON-lines file"),
    (["--round", "2"], '"r.jsonl"', "no annotator can log in yet"),
    (["--round", "2", "--add-annotator", "no spaces"], '"r.jsonl"', "annotator name 'no spaces'"),
])
def test_a_mistake_is_one_line_and_exit_code_2_before_ray_starts(config, capsys, args, paths, says):
    assert main(["annotate", *args, "--config", config(paths)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and err.count("\n") == 1


def test_a_share_outside_0_to_1_is_refused_by_the_option_parser(config, capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["annotate", "--round", "2", "--double-share", "1.5", "--config", config()])
    assert exit_code.value.code == 2 and "a share between 0 and 1, got '1.5'" in capsys.readouterr().err


def test_a_round_whose_candidates_are_not_made_yet_says_the_run_that_makes_them(config, capsys):
    path = config()
    assert main(["annotate", "--round", "2", "--config", path, "--add-annotator", "ana"]) == 0
    assert main(["annotate", "--round", "2", "--config", path]) == 2
    assert (f"round 2's candidates are not made yet for this config: llama2 run chat --config {path} --until "
            "preference_candidates_v2") in capsys.readouterr().err


def _no_ray(*args, **kwargs) -> None:
    raise AssertionError("Ray was started before the mistake was reported")
