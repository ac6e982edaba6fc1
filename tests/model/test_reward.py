"""The reward model: the Llama backbone with a scalar head read at the last real token, whatever the padding."""

import json

import pytest
import torch

from model.args import CONFIGS
from model.chat_template import llama2_chat_template
from model.convert import load_reward_model
from model.hf_format import load_hf, save_hf_reward, write_tokenizer_files
from model.llama import Transformer
from model.reward import RewardModel
from model.tokenizer import load_tokenizer
from tests.model.tiny_tokenizer import train_llama_tokenizer, word_lines
from model.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def reward_model():
    torch.manual_seed(0)
    rm = RewardModel(CONFIGS["tiny"]).eval()
    rm.init_weights(std=0.2)
    return rm


A, B = [1, 5, 9, 13, 2], [1, 7, 2]


def score(rm: RewardModel, rows: list[list[int]], masks: list[list[bool]]) -> torch.Tensor:
    with torch.no_grad():
        return rm(torch.tensor(rows), torch.tensor(masks))


def test_left_right_and_no_padding_give_the_same_scores(reward_model):
    alone = torch.cat([score(reward_model, [s], [[True] * len(s)]) for s in (A, B)])
    right = score(reward_model, [A, B + [0, 0]], [[True] * 5, [True] * 3 + [False] * 2])
    left = score(reward_model, [A, [0, 0] + B], [[True] * 5, [False] * 2 + [True] * 3])
    assert torch.allclose(right, alone, atol=1e-5) and torch.allclose(left, alone, atol=1e-5)


def test_what_the_padding_holds_changes_nothing(reward_model):
    zeros = score(reward_model, [[0, 0] + B], [[False, False, True, True, True]])
    other = score(reward_model, [[77, 31] + B], [[False, False, True, True, True]])
    assert torch.equal(zeros, other)


def test_a_row_without_real_tokens_is_refused(reward_model):
    with pytest.raises(ValueError, match="at least one real token"):
        score(reward_model, [[1, 2, 3]], [[False, False, False]])


def test_reward_model_shares_the_language_model_backbone():
    torch.manual_seed(0)
    lm = Transformer(CONFIGS["tiny"]).eval()
    lm.init_weights(std=0.2)
    rm = RewardModel.from_language_model(lm, head_std=0.1).eval()
    tokens = torch.tensor([[1, 4, 8, 15, 16]])
    with torch.no_grad():
        expected = lm.hidden_states(tokens)[0, -1] @ rm.output.weight[0]
        assert torch.allclose(rm(tokens, torch.ones_like(tokens, dtype=torch.bool)), expected.unsqueeze(0), atol=1e-6)
    assert set(rm.state_dict()) == set(lm.state_dict())
    assert rm.output.weight.shape == (1, CONFIGS["tiny"].dim)


def test_fresh_head_starts_every_score_at_zero():
    rm = RewardModel.from_language_model(Transformer(CONFIGS["tiny"]))
    assert torch.all(rm(torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.bool)) == 0)


def test_gradient_of_a_ranking_loss_reaches_the_backbone(reward_model):
    chosen, rejected = torch.tensor([[1, 5, 6, 7]]), torch.tensor([[1, 5, 6, 9]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss = -torch.nn.functional.logsigmoid(reward_model(chosen, mask) - reward_model(rejected, mask)).mean()
    loss.backward()
    assert reward_model.layers[0].attention.wq.weight.grad.abs().sum() > 0
    reward_model.zero_grad()


def test_hf_export_round_trips_and_is_not_taken_for_a_language_model(reward_model, tmp_path):
    save_hf_reward(tmp_path, reward_model.args, reward_model.state_dict())
    loaded = load_reward_model(tmp_path).eval()
    rows, masks = [A, B + [0, 0]], [[True] * 5, [True] * 3 + [False] * 2]
    assert torch.equal(score(loaded, rows, masks), score(reward_model, rows, masks))
    with pytest.raises(CheckpointError, match="reward model"):
        load_hf(tmp_path)


def test_transformers_sequence_classification_gives_our_scores(reward_model, tmp_path):
    transformers = pytest.importorskip("transformers")
    save_hf_reward(tmp_path, reward_model.args, reward_model.state_dict())
    tokenizer = load_tokenizer(train_llama_tokenizer(tmp_path / "spm", word_lines()))
    write_tokenizer_files(tmp_path, tokenizer, llama2_chat_template(tokenizer))  # as every reward stage does: the config's pad id is its unknown token
    assert json.loads((tmp_path / "config.json").read_text())["pad_token_id"] == tokenizer.sp.unk_id() == 0
    theirs = transformers.LlamaForSequenceClassification.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    rows = [A, B + [0, 0]]  # right padding with the config's pad token id, as transformers expects
    with torch.no_grad():
        expected = theirs(torch.tensor(rows), attention_mask=torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])).logits.squeeze(-1)
    assert torch.allclose(score(reward_model, rows, [[True] * 5, [True] * 3 + [False] * 2]), expected, atol=1e-5)
