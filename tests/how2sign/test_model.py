import pytest
import torch

from how2sign import decoding
from how2sign.config import TrainConfig
from how2sign.model import SignTranslator
from how2sign.presets import PRESETS, preset
from how2sign.rules import ConfigError
from how2sign.vocab import BOS_ID, PAD_ID, Vocab, detokenize, tokenize


def tiny_model(**kw) -> SignTranslator:
    cfg = TrainConfig(d_model=32, nhead=4, encoder_layers=1, decoder_layers=1, dim_feedforward=64, dropout=0.0,
                      **kw)
    return SignTranslator(cfg.model_config(input_dim=12, vocab_size=20))


def test_vocab_roundtrip_and_specials():
    v = Vocab.build(["Then you cut the onion.", "Cut it, then stir."])
    assert v.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    ids = v.encode("Then you cut the onion.")
    assert ids[0] == BOS_ID and v.decode(ids) == "then you cut the onion."
    assert v.decode(v.encode("a zebra")) == "<unk> <unk>"
    assert Vocab.from_list(v.to_list()).stoi == v.stoi
    assert tokenize("Don't stop!") == ["don't", "stop", "!"]
    assert detokenize(["cut", "it", ",", "then", "stir", "."]) == "cut it, then stir."


def test_parameter_count_is_measured():
    m = tiny_model()
    assert m.trainable_parameters() == sum(p.numel() for p in m.parameters())
    # V4's Transformer core is about 3.7M parameters, not the notes' "~2M".
    v4 = SignTranslator(preset("v4").model_config(input_dim=216, vocab_size=1000))
    assert 3.6e6 < v4.transformer_parameters() < 3.8e6


def test_padding_mask_makes_padding_irrelevant():
    torch.manual_seed(0)
    m = tiny_model().eval()
    src = torch.randn(1, 5, 12)
    tgt = torch.tensor([[BOS_ID, 5, 6]])
    pad = torch.zeros(1, 5, dtype=torch.bool)
    a = m(src, pad, tgt)
    src2 = torch.cat([src, torch.randn(1, 3, 12) * 100], dim=1)
    pad2 = torch.tensor([[False] * 5 + [True] * 3])
    b = m(src2, pad2, tgt)
    assert torch.allclose(a, b, atol=1e-5)
    # The target side too: padded target positions do not change earlier logits.
    c = m(src, pad, torch.tensor([[BOS_ID, 5, 6, PAD_ID]]))
    assert torch.allclose(a, c[:, :3], atol=1e-5)


def test_head_is_tied_and_decoding_runs():
    m = tiny_model().eval()
    assert m.head.weight.data_ptr() == m.embed.weight.data_ptr()
    src, pad = torch.randn(2, 6, 12), torch.zeros(2, 6, dtype=torch.bool)
    g = decoding.greedy(m, src, pad, max_len=5)
    b = decoding.beam(m, src, pad, beam_size=3, max_len=5)
    assert len(g) == len(b) == 2 and all(len(x) <= 4 for x in g + b)


@pytest.mark.parametrize("d_model,nhead", [(100, 8), (250, 4), (7, 2)])
def test_indivisible_d_model_is_a_clear_error(d_model, nhead):
    with pytest.raises(ConfigError, match=f"d_model={d_model}"):
        TrainConfig(d_model=d_model, nhead=nhead)


def test_an_indivisible_decoder_head_count_names_decoder_nhead():
    from how2sign.model import ModelConfig

    shape = dict(input_dim=12, vocab_size=20, d_model=32, nhead=4, encoder_layers=1, decoder_layers=1,
                 dim_feedforward=64, dropout=0.0, max_frames=8, max_tokens=8)
    for make in (lambda: TrainConfig(d_model=32, nhead=4, decoder_nhead=3), lambda: ModelConfig(**shape, decoder_nhead=3)):
        with pytest.raises(ConfigError, match=r"^decoder_nhead must divide d_model=32 \(legal decoder_nhead for"):
            make()


def test_presets_from_the_notes():
    assert set(PRESETS) == {"v1", "v2", "v3", "v4", "v4-quick", "plan-b-small"}
    v4 = preset("V4")
    assert (v4.d_model, v4.encoder_layers, v4.decoder_layers, v4.dim_feedforward) == (256, 2, 2, 1024)
    assert (v4.dropout, v4.batch_size, v4.lr, v4.lr_min, v4.epochs, v4.patience) == (0.3, 64, 1e-4, 1e-6, 30, 10)
    assert preset("v4-quick").epochs == 3
    assert preset("plan-b-small").d_model == 128
    assert preset("v2").d_model == 512 and preset("v2").scheduler == "plateau"
    with pytest.raises(ConfigError, match="unknown preset 'v9'"):
        preset("v9")


def test_set_overrides_are_type_checked():
    cfg = TrainConfig().with_sets(["lr=3e-4", "epochs=5", "scheduler=plateau"])
    assert (cfg.lr, cfg.epochs, cfg.scheduler) == (3e-4, 5, "plateau")
    with pytest.raises(ConfigError, match="unknown TrainConfig key 'learning_rate'"):
        TrainConfig().with_sets(["learning_rate=1"])
    with pytest.raises(ConfigError, match="epochs must be int, got 'five'"):
        TrainConfig().with_sets(["epochs=five"])
    with pytest.raises(ConfigError, match="expected key=value"):
        TrainConfig().with_sets(["epochs"])
    with pytest.raises(ConfigError, match="dropout must be float"):
        TrainConfig.from_dict({"dropout": "high"})
    with pytest.raises(ConfigError, match="d_model must be int"):
        TrainConfig.from_dict({"d_model": 256.0})
