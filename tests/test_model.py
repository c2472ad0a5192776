"""The architecture on a tiny random BERT: heads and loss by hand, encoder against transformers."""

import math

import torch
from conftest import tiny_bert_config
from transformers import BertModel

from spanqa.loss import span_loss
from spanqa.model import HeadConfig, SpanModel, encoder_from_config


def tiny(head: HeadConfig | None = None):
    torch.manual_seed(0)
    cfg = tiny_bert_config(100)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    return SpanModel(encoder_from_config(cfg), head or HeadConfig()).eval(), cfg


def inputs():
    ids = torch.tensor([[2, 5, 6, 3, 10, 11, 12, 13, 3], [2, 7, 3, 20, 21, 3, 0, 0, 0]])
    att = (torch.arange(9) < torch.tensor([[9], [6]])).long()
    tt = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0, 0]])
    span = torch.tensor([[1, 0, 0, 0, 1, 1, 1, 1, 0], [1, 0, 0, 1, 1, 0, 0, 0, 0]]).bool()
    return ids, att, tt, span


def test_encoder_matches_transformers_bert():
    model, cfg = tiny()
    ref = BertModel(cfg, add_pooling_layer=False).eval()
    ref.load_state_dict(model.encoder.state_dict())
    ids, att, tt, _ = inputs()
    with torch.no_grad():
        ours = model.encoder(input_ids=ids, attention_mask=att, token_type_ids=tt).last_hidden_state
        theirs = ref(input_ids=ids, attention_mask=att, token_type_ids=tt).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_heads_and_loss_match_hand_computation():
    model, _ = tiny()
    ids, att, tt, span = inputs()
    with torch.no_grad():
        begin, end = model(ids, att, span, tt)
        h = model.encoder(input_ids=ids, attention_mask=att, token_type_ids=tt).last_hidden_state
    wb, bb = model.begin_head.net.weight[0].detach(), model.begin_head.net.bias[0].detach()
    we, be = model.end_head.net.weight[0].detach(), model.end_head.net.bias[0].detach()
    assert model.begin_head is not model.end_head and not torch.equal(wb, we)  # two separate heads
    gold_b, gold_e = torch.tensor([5, 0]), torch.tensor([7, 0])
    total = 0.0
    for r in range(2):
        allowed = [t for t in range(9) if span[r, t]]
        for t in range(9):
            hb = float(h[r, t] @ wb + bb)
            if t in allowed:
                assert math.isclose(float(begin[r, t]), hb, rel_tol=1e-5, abs_tol=1e-5)
            else:
                assert float(begin[r, t]) == torch.finfo(torch.float32).min
        lb = [float(h[r, t] @ wb + bb) for t in allowed]
        le = [float(h[r, t] @ we + be) for t in allowed]
        zb = math.log(sum(math.exp(x) for x in lb))
        ze = math.log(sum(math.exp(x) for x in le))
        gb, ge = allowed.index(int(gold_b[r])), allowed.index(int(gold_e[r]))
        total += 0.5 * ((zb - lb[gb]) + (ze - le[ge]))
    loss = span_loss(begin, end, gold_b, gold_e)
    assert math.isclose(float(loss), total / 2, rel_tol=1e-5)


def test_mlp_head_shapes_and_gradients_reach_both_heads():
    model, _ = tiny(HeadConfig(kind="mlp"))
    model.train()
    ids, att, tt, span = inputs()
    b, e = model(ids, att, span, tt)
    assert b.shape == e.shape == ids.shape
    span_loss(b, e, torch.tensor([4, 3]), torch.tensor([6, 4])).backward()
    for head in (model.begin_head, model.end_head):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
