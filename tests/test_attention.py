"""spanqa.attention: the cheap CPU attention dropout against torch's SDPA and a hand computation."""

from __future__ import annotations

import pytest
import torch

from spanqa.attention import Dropout, attention, drop_mask, use_cheap_dropout


def tiny_bert(dropout: float):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     vocab_size=100, hidden_dropout_prob=0.0, attention_probs_dropout_prob=dropout)
    return BertModel(cfg, add_pooling_layer=False)


def padded_batch():
    ids = torch.randint(0, 100, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_mask_drops_at_the_quantised_rate_and_repeats_under_a_seed(p):
    torch.manual_seed(3)
    m = drop_mask((7, 31, 4099), p)  # an element count that is not a multiple of 4
    assert m.shape == (7, 31, 4099) and m.dtype == torch.bool
    assert abs(m.float().mean().item() - round(p * 65536) / 65536) < 0.002
    torch.manual_seed(3)
    assert torch.equal(m, drop_mask((7, 31, 4099), p))
    assert not torch.equal(m, drop_mask((7, 31, 4099), p))  # the generator moved on
    assert not drop_mask((5, 5), 0.0).any()


def test_attention_is_sdpa_in_eval_and_the_hand_computation_in_training():
    model = tiny_bert(0.25)
    ids, mask = padded_batch()
    model.eval()
    ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert use_cheap_dropout(model)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).last_hidden_state, ref)

    layer = model.encoder.layer[0].attention.self
    q, k, v = (torch.randn(2, 4, 9, 8, requires_grad=True) for _ in range(3))
    pad = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    pad[1, :, :, 5:] = False
    torch.manual_seed(7)
    out, _ = attention(layer, q, k, v, pad, dropout=0.25, scaling=8 ** -0.5)
    grads = torch.autograd.grad((out * torch.arange(out.numel()).view(out.shape)).sum(), (q, k, v))
    torch.manual_seed(7)
    drop = drop_mask((2, 4, 9, 9), 0.25)
    probs = torch.softmax((q @ k.transpose(2, 3) * 8 ** -0.5).masked_fill(~pad, float("-inf")), dim=-1)
    want = (torch.where(drop, 0.0, probs / 0.75) @ v).transpose(1, 2)
    want_grads = torch.autograd.grad((want * torch.arange(want.numel()).view(want.shape)).sum(), (q, k, v))
    assert torch.allclose(out, want, atol=1e-6)
    assert all(torch.allclose(g, w, rtol=1e-4, atol=1e-3) for g, w in zip(grads, want_grads, strict=True))
    assert not torch.allclose(out, (probs @ v).transpose(1, 2), atol=1e-3)  # dropout did something


def test_training_mode_with_no_drops_matches_eval_and_gradients_flow():
    model = tiny_bert(1e-6)  # round(65,536 p) = 0: nothing is dropped, the scale is 1 + 1e-6
    ids, mask = padded_batch()
    model.eval()
    ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
    use_cheap_dropout(model)
    model.train()
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    assert torch.allclose(out[real], ref[real], atol=1e-5)
    out[real].sum().backward()
    assert model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_every_dropout_module_becomes_the_cheap_one_and_acts_as_dropout():
    model = tiny_bert(0.1)
    n = sum(type(m) is torch.nn.Dropout for m in model.modules())
    use_cheap_dropout(model)
    assert n > 0 and sum(type(m) is Dropout for m in model.modules()) == n
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    d = Dropout(0.3)
    x = torch.rand(64, 1000) + 1
    torch.manual_seed(2)
    y = d(x)
    torch.manual_seed(2)
    want = torch.where(drop_mask(x.shape, 0.3), 0.0, x / 0.7)
    assert torch.allclose(y, want) and abs((y == 0).float().mean().item() - 0.3) < 0.01
    assert torch.equal(d.eval()(x), x)


def test_an_encoder_without_the_attention_interface_keeps_its_attention():
    seq = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.2))
    assert use_cheap_dropout(seq) is False
    assert type(seq[1]) is Dropout and seq[1].p == 0.2


def test_without_dropout_bf16_training_takes_the_hand_computation_and_everything_else_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layer = tiny_bert(0.0).encoder.layer[0].attention.self
    pad = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    pad[1, :, :, 5:] = False

    def inputs(dtype, grad):
        g = torch.Generator().manual_seed(4)
        return [torch.randn(2, 4, 9, 8, generator=g).to(dtype).requires_grad_(grad) for _ in range(3)]

    def hand(q, k, v):  # the scale on the queries, the mask as a bias
        scores = (q * 8 ** -0.5) @ k.transpose(2, 3) + torch.zeros((), dtype=q.dtype).masked_fill(
            ~pad, torch.finfo(q.dtype).min)
        return (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).contiguous()

    q, k, v = inputs(torch.bfloat16, True)  # training in bf16: the fused kernel's backward is the slow one
    out, _ = attention(layer, q, k, v, pad, dropout=0.0, scaling=8 ** -0.5)
    assert torch.equal(out, hand(q, k, v))
    assert all(g is not None for g in torch.autograd.grad(out.float().sum(), (q, k, v)))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in training: still within bf16 rounding of fp32's
        assert torch.equal(attention(layer, q, k, v, pad, dropout=0.0, scaling=8 ** -0.5)[0], out)
    exact = sdpa_attention_forward(layer, *(t.detach().float() for t in (q, k, v)), pad, dropout=0.0,
                                   scaling=8 ** -0.5)[0]
    assert torch.allclose(out.float(), exact, atol=2e-2, rtol=2e-2)
    for dtype, grad in [(torch.float32, True), (torch.bfloat16, False)]:
        q, k, v = inputs(dtype, grad)
        out, _ = attention(layer, q, k, v, pad, dropout=0.0, scaling=8 ** -0.5)
        assert torch.equal(out, sdpa_attention_forward(layer, q, k, v, pad, dropout=0.0, scaling=8 ** -0.5)[0])
    q, k, v = inputs(torch.bfloat16, True)
    assert not torch.equal(hand(q, k, v),
                           sdpa_attention_forward(layer, q, k, v, pad, dropout=0.0, scaling=8 ** -0.5)[0])
