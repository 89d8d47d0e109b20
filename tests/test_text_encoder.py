"""The prompted text encoder: parity with the library model, gradients to prompts only, correct masking."""

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, RobertaConfig, RobertaModel

from mope_lightning.models import MoPE, PromptedTextEncoder

SENTENCES = ["what color is the shape?", "does the image not contain a red circle?", "is there a blue triangle?"]


def tokens(encoder, texts):
    return encoder.tokenizer(texts, padding=True, return_tensors="pt")


def test_no_prompts_equals_the_real_minilm(minilm):
    batch = tokens(minilm, SENTENCES)
    expected = minilm.model(**batch).last_hidden_state
    ours, mask = minilm.forward_features(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    assert torch.equal(mask, batch["attention_mask"])


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_no_prompts_equals_the_library_for_random_init_families(family):
    if family == "bert":
        model = BertModel(
            BertConfig(
                vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64
            ),
            add_pooling_layer=False,
        )
    else:
        model = RobertaModel(
            RobertaConfig(
                vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64
            ),
            add_pooling_layer=False,
        )
    encoder = PromptedTextEncoder(model)
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
    # A prompter that declines every layer is the same as no prompter.
    ours, _ = encoder.forward_features(ids, mask, prompter=lambda layer, pooled, carried: None)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_gradients_reach_the_prompts_only(tiny_bert):
    mope = MoPE(tiny_bert.layer_dims, tiny_bert.layer_stages, cond_dim=12, num_experts=3)
    batch = tokens(tiny_bert, SENTENCES)
    out, mask = tiny_bert.forward_features(
        batch["input_ids"], batch["attention_mask"], prompter=mope.bind(torch.randn(3, 12))
    )
    assert out.shape[1] == batch["input_ids"].shape[1] + mope.num_prompts
    (out * torch.randn_like(out)).sum().backward()  # a random projection: out.sum() of LayerNorm-ed rows is 0
    assert all(not p.requires_grad and p.grad is None for p in tiny_bert.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mope.parameters())


def test_prompts_change_the_output_and_padding_does_not(tiny_bert):
    mope = MoPE(tiny_bert.layer_dims, tiny_bert.layer_stages, cond_dim=12, num_experts=3).eval()
    cond = torch.randn(1, 12)
    alone = tokens(tiny_bert, SENTENCES[:1])
    padded = tokens(tiny_bert, [SENTENCES[0], SENTENCES[1]])  # the second sentence is longer: the first is padded
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]
    with torch.no_grad():
        a = tiny_bert(alone["input_ids"], alone["attention_mask"], prompter=mope.bind(cond))
        b = tiny_bert(padded["input_ids"], padded["attention_mask"], prompter=mope.bind(cond.expand(2, -1)))
        plain = tiny_bert(alone["input_ids"], alone["attention_mask"])
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)
    assert not torch.allclose(a, plain, atol=1e-3)


def test_unprompted_layers_carry_the_previous_prompts(tiny_bert):
    calls = []

    def prompter(layer, pooled, carried=None):
        calls.append(layer)
        return torch.zeros(pooled.shape[0], 2, pooled.shape[1]) if layer == 0 else None

    batch = tokens(tiny_bert, SENTENCES)
    out, mask = tiny_bert.forward_features(batch["input_ids"], batch["attention_mask"], prompter=prompter)
    assert calls == list(range(tiny_bert.num_layers))
    assert out.shape[1] == batch["input_ids"].shape[1] + 2 and mask[:, 1:3].eq(1).all()


def test_frozen_model_stays_in_eval_mode(tiny_bert):
    tiny_bert.train()
    assert tiny_bert.training and not tiny_bert.model.training
    assert not any(m.training for m in tiny_bert.model.modules())


def test_a_family_we_cannot_prompt_is_refused():
    gpt2 = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(TypeError, match="cannot prompt text encoder of type 'gpt2'"):
        PromptedTextEncoder(gpt2)
