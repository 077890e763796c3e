"""LazyAdamW: AdamW on dense gradients, torch's SparseAdam on sparse ones; gradient clipping that takes
sparse gradients; the transformer trained with sparse item gradients."""

import numpy as np
import pytest
import torch

from valuerec.training.optim import LazyAdamW, clip_grad_norm, has_sparse_grads


def _run(opt_cls, make, steps, **kw):
    torch.manual_seed(0)
    model = make()
    opt = opt_cls(model.parameters(), **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        x = torch.randint(0, 50, (16,), generator=g) if isinstance(model, torch.nn.Embedding) else \
            torch.randn(8, 5, generator=g)
        (model(x) ** 2).sum().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_dense_parameters_follow_adamw():
    make = lambda: torch.nn.Linear(5, 3)  # noqa: E731
    for wd in (0.0, 0.1):
        ours = _run(LazyAdamW, make, 6, lr=0.01, betas=(0.9, 0.98), weight_decay=wd)
        ref = _run(torch.optim.AdamW, make, 6, lr=0.01, betas=(0.9, 0.98), weight_decay=wd)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_sparse_rows_follow_sparse_adam_and_untouched_rows_stay():
    make = lambda: torch.nn.Embedding(50, 4, sparse=True)  # noqa: E731
    ours = _run(LazyAdamW, make, 6, lr=0.01, betas=(0.9, 0.98))
    ref = _run(torch.optim.SparseAdam, make, 6, lr=0.01, betas=(0.9, 0.98))
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-6, atol=1e-7)
    torch.manual_seed(0)
    start = make().weight.detach()
    moved = (ours[0] != start).any(dim=1)
    assert 0 < int(moved.sum()) < 50            # rows never in a batch did not move


def test_clip_grad_norm_counts_sparse_rows_once():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    lin = torch.nn.Linear(3, 1)
    (lin(emb(torch.tensor([1, 1, 4]))) ** 2).sum().backward()     # row 1 twice: one row of the gradient
    dense = torch.cat([emb.weight.grad.to_dense().flatten(), *(p.grad.flatten() for p in lin.parameters())])
    total = clip_grad_norm(list(emb.parameters()) + list(lin.parameters()), 0.01)
    assert float(total) == pytest.approx(float(dense.norm()), rel=1e-5)
    after = torch.cat([emb.weight.grad.to_dense().flatten(), *(p.grad.flatten() for p in lin.parameters())])
    assert float(after.norm()) == pytest.approx(0.01, rel=1e-4)
    assert has_sparse_grads(emb) and not has_sparse_grads(lin)


def test_transformer_with_sparse_item_gradients_learns_and_round_trips(tmp_path):
    from valuerec.data.dataset import Catalogue, Sequences
    from valuerec.models import load_model
    from valuerec.models.transformer import BehaviourTransformer

    rng = np.random.default_rng(0)
    n_items = 12
    items = [(int(rng.integers(0, n_items)) + np.arange(20)) % n_items for _ in range(60)]   # cycles
    h = Sequences(items=[x.astype(np.int64) for x in items],
                  times=[np.arange(20, dtype=np.int64) * 3600 for _ in items])
    cat = Catalogue(item_ids=np.array([f"i{i}" for i in range(n_items)], dtype=object))
    fit = (lambda sparse: BehaviourTransformer(
        seed=0, d_model=16, n_layers=1, max_len=10, dropout=0.0, epochs=60, lr=5e-3, use_text=False,
        progress=False, loss="sampled", sparse_item_grads=sparse).fit(h, cat))
    m = fit(True)
    assert m.module_.encoder.item_table.id_emb.sparse
    top, _ = m.recommend(h, k=1, exclude=None)
    nxt = np.array([(x[-1] + 1) % n_items for x in items])
    assert (top[:, 0] == nxt).mean() > 0.9
    # every item is in every batch here, so the lazy update is Adam's: the same model as dense gradients
    torch.testing.assert_close(m.score(h), fit(False).score(h), rtol=1e-4, atol=1e-4)
    m.save(tmp_path / "m")
    back = load_model(tmp_path / "m")
    torch.testing.assert_close(back.score(h), m.score(h))
