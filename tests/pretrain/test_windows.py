"""Training windows over the tokenize stage's Arrow shards: coverage, sharding, mixing, resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from operators.formats.tokens import TokenCorpus, is_validation, validation_batches
from operators.pretrain.windows import WindowLoader
from tests.pretrain.token_shards import BOS, EOS, write_token_shards


def counting_docs(n_files: int, docs_per_file: int, source_of=lambda i: "web", seed: int = 0):
    """Documents whose bodies are runs of distinct numbers, so every token's origin is recoverable."""
    rng = np.random.default_rng(seed)
    files, next_value = [], 3
    for f in range(n_files):
        docs = []
        for d in range(docs_per_file):
            n = int(rng.integers(3, 40))
            docs.append((f"doc-{f}-{d}", source_of(f * docs_per_file + d), [3 + (next_value + k) % 60000 for k in range(n)]))
            next_value += n
        files.append(docs)
    return files


@pytest.fixture
def one_source(tmp_path: Path) -> list[Path]:
    return write_token_shards(tmp_path, counting_docs(3, 20))


def test_tokens_are_memory_mapped_not_copied(one_source):
    corpus = TokenCorpus.open(one_source, seed=0, validation_fraction=0.0)
    values = corpus.train["web"].chunks[0].values
    assert not values.flags.owndata  # a view on the mapped file


def test_documents_are_concatenated_with_bos_and_eos(tmp_path):
    shards = write_token_shards(tmp_path, [[("a", "web", [10, 11]), ("b", "web", [20])], [("c", "web", [30, 31, 32])]])
    stream = TokenCorpus.open(shards, seed=0, validation_fraction=0.0).train["web"]
    assert stream.read(0, stream.tokens).tolist() == [1, 10, 11, 2, 1, 20, 2, 1, 30, 31, 32, 2]


def test_windows_of_all_ranks_cover_every_token_once_without_overlap(one_source):
    seq_len, world = 16, 2
    corpus = TokenCorpus.open(one_source, seed=0, validation_fraction=0.0)
    stream = corpus.train["web"]
    n = stream.num_windows(seq_len)
    loaders = [WindowLoader(corpus, seq_len, 1, {}, seed=7, rank=r, world_size=world) for r in range(world)]
    seen: list[list[int]] = [[] for _ in range(world)]
    for _ in range(n // world):
        for r, loader in enumerate(loaders):
            inputs, targets = loader.next_batch()
            assert inputs.shape == targets.shape == (1, seq_len)
            assert inputs[0, 1:].tolist() == targets[0, :-1].tolist()
            start = _find(stream, inputs[0].tolist(), seq_len)
            seen[r].append(start)
    assert not set(seen[0]) & set(seen[1])
    starts = seen[0] + seen[1]
    assert len(set(starts)) == len(starts) == n - n % world  # one epoch: each window at most once
    assert set(starts) <= set(range(0, n * seq_len, seq_len))
    # The only tokens never used as a target: the first, and the tail shorter than a window.
    acc = corpus.accounting(seq_len)["web"]
    assert acc["window_tokens"] + acc["tail_tokens"] == stream.tokens
    assert 0 <= acc["tail_tokens"] - 1 < seq_len + 1


def _find(stream, window: list[int], seq_len: int) -> int:
    for w in range(stream.num_windows(seq_len)):
        if stream.window(w, seq_len)[:-1].tolist() == window:
            return w * seq_len
    raise AssertionError("window not found in the stream")


def test_same_seed_same_batches_other_seed_other_order(one_source):
    corpus = TokenCorpus.open(one_source, seed=0, validation_fraction=0.0)
    a, b, c = (WindowLoader(corpus, 8, 2, {}, seed=s) for s in (1, 1, 2))
    first = [a.next_batch()[0].tolist() for _ in range(5)]
    assert first == [b.next_batch()[0].tolist() for _ in range(5)]
    assert first != [c.next_batch()[0].tolist() for _ in range(5)]


def test_a_global_batch_does_not_depend_on_the_number_of_ranks(one_source):
    corpus = TokenCorpus.open(one_source, seed=0, validation_fraction=0.0)
    single = WindowLoader(corpus, 8, 4, {}, seed=3)
    pair = [WindowLoader(corpus, 8, 2, {}, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        expected = single.next_batch()[0].tolist()
        assert expected == pair[0].next_batch()[0].tolist() + pair[1].next_batch()[0].tolist()


def test_a_restored_loader_continues_exactly_where_the_saved_one_was(one_source):
    corpus = TokenCorpus.open(one_source, seed=0, validation_fraction=0.0)
    straight = WindowLoader(corpus, 8, 2, {}, seed=5)
    for _ in range(40):  # past one epoch of windows: the epoch permutation must resume too
        straight.next_batch()
    state = straight.state_dict()
    expected = [straight.next_batch()[0].tolist() for _ in range(5)]
    restored = WindowLoader(corpus, 8, 2, {}, seed=5)
    restored.load_state_dict(state)
    assert [restored.next_batch()[0].tolist() for _ in range(5)] == expected


def test_mixing_weights_scale_a_sources_share_of_windows(tmp_path):
    shards = write_token_shards(tmp_path, counting_docs(2, 40, source_of=lambda i: "books" if i % 2 else "web"))
    corpus = TokenCorpus.open(shards, seed=0, validation_fraction=0.0)
    natural = WindowLoader(corpus, 8, 1, {}, seed=0).windows
    loader = WindowLoader(corpus, 8, 1, {"books": 3.0}, seed=0)
    drawn = Counter(source for source, _ in loader.draw(4000))
    books, web = natural[0], natural[1]  # sources are sorted: books, web
    expected = 3 * books / (3 * books + web)
    assert drawn["books"] / 4000 == pytest.approx(expected, abs=0.03)


def test_validation_split_is_by_document_fixed_by_the_seed_and_disjoint_from_training(tmp_path):
    files = counting_docs(2, 100)
    shards = write_token_shards(tmp_path, files)
    corpus = TokenCorpus.open(shards, seed=4, validation_fraction=0.2)
    held_out = {doc_id for docs in files for doc_id, _, _ in docs if is_validation(doc_id, 4, 0.2)}
    assert 20 <= len(held_out) <= 60
    assert corpus.validation.documents == len(held_out)
    assert corpus.train["web"].documents + corpus.validation.documents == 200
    assert held_out != {doc_id for docs in files for doc_id, _, _ in docs if is_validation(doc_id, 5, 0.2)}
    train_tokens = set(corpus.train["web"].read(0, corpus.train["web"].tokens).tolist()) - {BOS, EOS}
    val_tokens = set(corpus.validation.read(0, corpus.validation.tokens).tolist()) - {BOS, EOS}
    assert not train_tokens & val_tokens  # every body token is unique to its document
    batches = list(validation_batches(corpus, 8, 4))
    assert sum(len(x) for x, _ in batches) == corpus.validation.num_windows(8)
