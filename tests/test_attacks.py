"""Attacks on a lightly erased model: real ASRs in [0, 1], and an optimisation that lowers its own loss."""

from unittest import mock

import pytest
import torch

from trust.attacks import TokenEmbeddingOverride, embedding_attack, paraphrase_attack
from trust.concepts import PRESETS
from trust.generation import generate
from trust.unlearn import UnlearnConfig, unlearn

FAST = {"num_train_images": 2, "retain_prompts": 2, "batch_size": 2, "data_steps": 5, "probe_every": 0}


@pytest.fixture(scope="module")
def erased(shapes_model):
    result = unlearn(shapes_model, PRESETS["conditional"], UnlearnConfig.for_method("esd-x", max_steps=2, **FAST))
    return result.erased_model(shapes_model), result


def test_embedding_attack_lowers_its_loss(shapes_model, erased):
    model, result = erased
    attack = embedding_attack(model, PRESETS["conditional"], result.before, num_steps=20, num_samples=2,
                              reference=shapes_model)
    assert 0 <= attack.asr <= 1 and 0 <= attack.asr_projected <= 1 and attack.num_samples == 2
    assert attack.loss_after < attack.loss_before
    assert attack.embeddings.shape == (1, shapes_model.max_tokens, shapes_model.text_encoder.config.hidden_size)
    assert len(attack.projected_prompts) == 1 and attack.projected_prompts[0].strip()


def test_paraphrase_attack_covers_every_wording(erased):
    model, _ = erased
    scenario = PRESETS["conditional"]
    with mock.patch("trust.attacks.generate", wraps=generate) as spy:
        attack = paraphrase_attack(model, scenario, samples_per_prompt=1)
    seeds = spy.call_args.kwargs["seeds"]
    assert len(set(seeds)) == len(seeds) == len(scenario.ua_prompts)  # every sample its own starting noise
    assert set(attack.per_prompt) == set(scenario.ua_prompts) and attack.num_samples == len(scenario.ua_prompts)
    assert 0 <= attack.asr <= 1
    assert attack.asr == pytest.approx(sum(attack.per_prompt.values()) / len(attack.per_prompt))


def test_token_override_replaces_only_the_given_positions(shapes_model):
    ids = shapes_model.tokenize(["a red circle"])
    plain = shapes_model.text_encoder.get_input_embeddings()(ids)
    vectors = torch.zeros(2, plain.shape[-1])
    with TokenEmbeddingOverride(shapes_model.text_encoder, torch.tensor([1, 2]), vectors):
        changed = shapes_model.text_encoder.get_input_embeddings()(ids)
    assert torch.equal(changed[0, 1:3], vectors) and torch.equal(changed[0, 3:], plain[0, 3:])
    assert torch.equal(shapes_model.text_encoder.get_input_embeddings()(ids), plain)  # the hook is gone
