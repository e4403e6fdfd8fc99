"""The masked transformer against its plain mode and a naive per-edge reference."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import random_model
from prune.ablation import ABLATIONS
from prune.graph import CONVENTIONS
from prune.model import Transformer, TransformerConfig

# float64 throughout: the masked sums reorder additions, so agreement is to
# rounding (observed < 1e-12); 1e-9 leaves three orders of margin.
ATOL = 1e-9


@st.composite
def configs(draw):
    n_heads = draw(st.integers(1, 4))
    n_kv = draw(st.sampled_from([h for h in range(1, n_heads + 1) if n_heads % h == 0]))
    arch = draw(st.sampled_from(["tracr", "gpt2", "llama"]))
    common = dict(
        vocab_size=draw(st.integers(3, 9)), d_model=draw(st.sampled_from([4, 8, 12])),
        n_layers=draw(st.integers(1, 3)), n_heads=n_heads, d_head=draw(st.sampled_from([2, 4])),
        d_mlp=draw(st.sampled_from([4, 16])), n_positions=8,
    )
    if arch == "tracr":
        return TransformerConfig(**common, causal=draw(st.booleans()))
    if arch == "gpt2":
        return TransformerConfig(**common, norm="layernorm", activation="gelu_tanh", unembed_bias=draw(st.booleans()))
    return TransformerConfig(
        **common, n_kv_heads=n_kv, norm="rmsnorm", activation="silu", gated_mlp=True, positional="rotary",
        attn_bias=False, attn_out_bias=False, mlp_bias=False,
    )


def naive_fixed(model, S):
    """Per reader ``r``: the part of its input no mask ablates. Under EAP-IG's conventions the position
    embedding and the output bias ``b_O`` of every attention layer the reader comes after; else none."""
    g, cfg = model.graph, model.cfg
    if g.conventions == "ours":
        return lambda r: 0.0
    zero = torch.zeros(S, cfg.d_model, dtype=model.W_E.dtype)
    pos = model.W_pos[:S] if model.W_pos is not None else zero

    def fixed(r):
        layer, offset = divmod(r, 3 * cfg.n_heads + 1)  # the logits reader: layer n_layers
        after = layer + (offset == 3 * cfg.n_heads)  # an MLP reads its own layer's attention
        return pos + sum((b.b_O for b in model.blocks[:after] if b.b_O is not None), zero)
    return fixed


def naive_input_writer(model, tokens):
    """``input``: the token embedding under EAP-IG's conventions, with the position embedding under ours."""
    if model.graph.conventions == "eap-ig":
        return model.W_E[tokens]
    return model.W_E[tokens] + (0.0 if model.W_pos is None else model.W_pos[: tokens.shape[1]])


def naive_masked(model, tokens, z, ablated):
    """Reference: every reader sums its writers one edge at a time (no stacking)."""
    g, cfg = model.graph, model.cfg
    B, S = tokens.shape
    writers = [naive_input_writer(model, tokens)]
    abl = (lambda w: 0.0) if ablated is None else (lambda w: ablated[w])
    fixed = naive_fixed(model, S)

    def reader_input(r):
        return fixed(r) + sum(z[w, r] * writers[w] + (1 - z[w, r]) * abl(w) for w in range(g.n_visible_writers(r)))

    for l, block in enumerate(model.blocks):
        H = cfg.n_heads
        xq = torch.stack([block.ln1(reader_input(g.head_reader(l, h, "q"))) for h in range(H)])
        xk = torch.stack([block.ln1(reader_input(g.head_reader(l, h, "k"))) for h in range(H)])
        xv = torch.stack([block.ln1(reader_input(g.head_reader(l, h, "v"))) for h in range(H)])
        heads = model._attention(block, xq, xk, xv, None, model._rotary(S, tokens.device, torch.float64)
                                 if cfg.positional == "rotary" else None)
        writers += list(heads)
        writers.append(model._mlp(block, block.ln2(reader_input(g.mlp_reader(l)))))
    return model.unembed(model.ln_f(reader_input(g.logits_reader)))


@given(configs(), st.integers(0, 2**16), st.sampled_from(CONVENTIONS), st.data())
def test_all_masks_one_equals_plain(cfg, seed, conventions, data):
    model = random_model(cfg, seed, conventions)
    tokens = torch.randint(0, cfg.vocab_size, (2, data.draw(st.integers(1, 8))))
    plain = model(tokens)
    masked = model(tokens, edge_mask=torch.ones(model.graph.n_edges, dtype=torch.float64))
    torch.testing.assert_close(masked, plain, atol=ATOL, rtol=0)


@given(configs(), st.integers(0, 2**16), st.sampled_from(CONVENTIONS), st.data())
def test_all_masks_zero_is_the_ablated_run(cfg, seed, conventions, data):
    model = random_model(cfg, seed, conventions)
    S = data.draw(st.integers(1, 8))
    clean, corrupt = torch.randint(0, cfg.vocab_size, (2, 2, S))
    zeros = torch.zeros(model.graph.n_edges, dtype=torch.float64)
    # resample: every reader sees the corrupted run's writers, i.e. the corrupted run
    corrupted_logits, writers = model(corrupt, return_writers=True)
    torch.testing.assert_close(model(clean, edge_mask=zeros, ablated=writers), corrupted_logits, atol=ATOL, rtol=0)
    # zero: every reader sees what no mask ablates (0 under our conventions), whatever the input
    zero_out = model(clean, edge_mask=zeros)
    fixed = naive_fixed(model, S)(model.graph.logits_reader) + torch.zeros_like(writers[0])
    torch.testing.assert_close(zero_out, model.unembed(model.ln_f(fixed)), atol=ATOL, rtol=0)


@given(configs(), st.integers(0, 2**16), st.sampled_from(["zero", "resample", "mean"]), st.sampled_from(CONVENTIONS),
       st.data())
def test_circuit_mask_matches_naive_reference(cfg, seed, ablation, conventions, data):
    model = random_model(cfg, seed, conventions)
    g = model.graph
    S = data.draw(st.integers(1, 6))
    clean, corrupt = torch.randint(0, cfg.vocab_size, (2, 3, S))
    # binary (a circuit) or soft gates, with zeros either way
    keep = data.draw(st.lists(st.sampled_from([0.0, 1.0, 0.3]), min_size=g.n_edges, max_size=g.n_edges))
    z = torch.tensor(keep, dtype=torch.float64)
    ablated = None
    if ablation == "resample":
        ablated = model.writers(corrupt)
    elif ablation == "mean":
        ablated = model.writers(corrupt).mean(1, keepdim=True)
    want = naive_masked(model, clean, g.dense(z), ablated)
    with torch.no_grad():  # evaluation: sparse reads over the writers with a non-zero gate
        torch.testing.assert_close(model(clean, edge_mask=z, ablated=ablated), want, atol=ATOL, rtol=0)
    # training: the dense reads whose backward accumulates gradients
    got = model(clean, edge_mask=z.clone().requires_grad_(), ablated=ablated)
    torch.testing.assert_close(got.detach(), want, atol=ATOL, rtol=0)


@given(configs(), st.integers(0, 2**16), st.sampled_from(CONVENTIONS))
def test_node_mask_zero_equals_removing_the_writers_edges(cfg, seed, conventions):
    model = random_model(cfg, seed, conventions)
    g = model.graph
    tokens = torch.randint(0, cfg.vocab_size, (2, 5))
    writer = int(torch.randint(0, g.n_writers, ()).item())
    nodes = torch.ones(g.n_writers, dtype=torch.float64)
    nodes[writer] = 0
    edges = torch.ones(g.n_edges, dtype=torch.float64)
    edges[g.edge_index_tensor[0] == writer] = 0
    torch.testing.assert_close(model(tokens, node_mask=nodes), model(tokens, edge_mask=edges), atol=ATOL, rtol=0)


def test_gradients_match_finite_differences():
    cfg = TransformerConfig(vocab_size=7, d_model=8, n_layers=2, n_heads=2, d_head=4, d_mlp=8, n_positions=6,
                            norm="layernorm", activation="gelu")
    model = random_model(cfg, 0)
    tokens, corrupt = torch.randint(0, 7, (2, 2, 5))
    ablated = model.writers(corrupt)
    z = torch.rand(model.graph.n_edges, dtype=torch.float64, requires_grad=True)
    nodes = torch.rand(model.graph.n_writers, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z, n: model(tokens, edge_mask=z, node_mask=n, ablated=ablated).pow(2).sum(), (z, nodes)
    )


def test_bad_inputs_get_clear_errors():
    cfg = TransformerConfig(vocab_size=5, d_model=4, n_layers=1, n_heads=1, d_head=2, d_mlp=4, n_positions=4)
    model = Transformer(cfg)
    with pytest.raises(ValueError, match="exceeds the model's 4 positions"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="token id 9 is outside"):
        model(torch.full((1, 2), 9))
    with pytest.raises(ValueError, match="edge_mask must be"):
        model(torch.zeros(1, 2, dtype=torch.long), edge_mask=torch.ones(3))
    with pytest.raises(ValueError, match="ablated writers must be"):
        model(torch.zeros(2, 3, dtype=torch.long), edge_mask=torch.ones(model.graph.n_edges),
              ablated=torch.zeros(model.graph.n_writers, 2, 4, 4))
    with pytest.raises(ValueError, match="n_heads=3 is not a multiple"):
        TransformerConfig(vocab_size=5, d_model=4, n_layers=1, n_heads=3, n_kv_heads=2, d_head=2, d_mlp=4, n_positions=4)
    with pytest.raises(ValueError, match="norm='batch'"):
        TransformerConfig(vocab_size=5, d_model=4, n_layers=1, n_heads=1, d_head=2, d_mlp=4, n_positions=4, norm="batch")


@given(configs(), st.integers(0, 2**16), st.sampled_from(["zero", "resample", "mean"]))
def test_per_example_masks_equal_one_run_per_example(cfg, seed, ablation):
    model = random_model(cfg, seed)
    g = model.graph
    clean, corrupt = torch.randint(0, cfg.vocab_size, (2, 3, 5))
    z = torch.rand(3, g.n_edges, dtype=torch.float64)
    nodes = torch.rand(3, g.n_writers, dtype=torch.float64)
    ablated = {"zero": None, "resample": model.writers(corrupt),
               "mean": model.writers(corrupt).mean(1, keepdim=True)}[ablation]
    together = model(clean, edge_mask=z, node_mask=nodes, ablated=ablated)
    for b in range(3):
        part = None if ablated is None else ablated[:, b : b + 1] if ablated.shape[1] == 3 else ablated
        alone = model(clean[b : b + 1], edge_mask=z[b], node_mask=nodes[b], ablated=part)
        torch.testing.assert_close(together[b : b + 1], alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("conventions", CONVENTIONS)
@pytest.mark.parametrize("per_example", [False, True])
@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_gradients_match_finite_differences_for_every_ablation(ablation, per_example, conventions):
    # The writers' gradients are accumulated in one buffer by the reads' backward passes
    # (prune.model._WriterGrads); this checks that bookkeeping on grouped-query attention,
    # rotary, RMSNorm and a gated MLP, with every ablation shape ([W, B, ..], [W, 1, ..], none).
    cfg = TransformerConfig(vocab_size=7, d_model=8, n_layers=2, n_heads=4, n_kv_heads=2, d_head=4, d_mlp=8,
                            n_positions=6, norm="rmsnorm", activation="silu", gated_mlp=True, positional="rotary")
    model = random_model(cfg, 2, conventions)
    tokens, corrupt = torch.randint(0, 7, (2, 3, 4))
    ablated = {"zero": None, "resample": model.writers(corrupt),
               "mean": model.writers(corrupt).mean(1, keepdim=True)}[ablation]
    shape = (3,) if per_example else ()
    z = torch.rand(*shape, model.graph.n_edges, dtype=torch.float64, requires_grad=True)
    nodes = torch.rand(*shape, model.graph.n_writers, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z, n: model(tokens, edge_mask=z, node_mask=n, ablated=ablated).pow(2).sum(), (z, nodes))


@given(configs(), st.integers(0, 2**16), st.sampled_from(["zero", "resample"]), st.booleans())
def test_the_norm_folded_into_the_readers_projections_changes_nothing(cfg, seed, ablation, per_example):
    # Masked mode with frozen weights and an RMS norm norms the attention readers inside their projections
    # (prune._masked_read._NormProjectReaders); the same run with the norm applied first must agree, in
    # the logits and in the mask's gradient (float64: rounding, see ATOL).
    model = random_model(cfg, seed)
    clean, corrupt = torch.randint(0, cfg.vocab_size, (2, 2, 5))
    ablated = None if ablation == "zero" else model.writers(corrupt)
    shape = (2,) if per_example else ()
    z0 = torch.rand(*shape, model.graph.n_edges, dtype=torch.float64)
    runs = []
    for folds in (True, False):
        z = z0.clone().requires_grad_(True)
        with pytest.MonkeyPatch.context() as mp:
            if not folds:
                mp.setattr(type(model.blocks[0]), "_norm_folds", lambda self, x: False)
            out = model(clean, edge_mask=z, ablated=ablated)
            out.pow(2).sum().backward()
        runs.append((out.detach(), z.grad))
    assert model.blocks[0]._norm_folds(torch.ones(1, requires_grad=True, dtype=torch.float64)) == (cfg.norm == "rmsnorm")
    torch.testing.assert_close(runs[0][0], runs[1][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(runs[0][1], runs[1][1], atol=1e-8, rtol=1e-8)


@given(configs(), st.integers(0, 2**16), st.sampled_from(["zero", "resample", "mean"]), st.booleans())
def test_reading_the_mlp_ahead_with_the_heads_changes_nothing(cfg, seed, ablation, node_mask):
    # Each layer's attention read also sums its writers into the MLP reader's input, and the MLP read's
    # backward leaves those rows of the writer and mask gradients to the attention read's
    # (prune._masked_read._ReadWriters, lookahead). Without it, every read covers all its writers itself;
    # the logits, the mask's and the node mask's gradients must agree (float64: rounding, see ATOL).
    import prune._masked_read as masked_read

    model = random_model(cfg, seed)
    clean, corrupt = torch.randint(0, cfg.vocab_size, (2, 2, 5))
    ablated = {"zero": None, "resample": model.writers(corrupt),
               "mean": model.writers(corrupt).mean(1, keepdim=True)}[ablation]
    z0 = torch.rand(model.graph.n_edges, dtype=torch.float64)
    n0 = torch.rand(model.graph.n_writers, dtype=torch.float64) if node_mask else None
    read = masked_read._Residual.read
    runs = []
    for lookahead in (True, False):
        z = z0.clone().requires_grad_(True)
        nodes = None if n0 is None else n0.clone().requires_grad_(True)
        with pytest.MonkeyPatch.context() as mp:
            if not lookahead:
                mp.setattr(masked_read._Residual, "read", lambda self, readers, lookahead=False: read(self, readers))
            out = model(clean, edge_mask=z, node_mask=nodes, ablated=ablated)
            out.pow(2).sum().backward()
        runs.append((out.detach(), z.grad, None if nodes is None else nodes.grad))
    torch.testing.assert_close(runs[0][0], runs[1][0], atol=ATOL, rtol=0)
    for a, b in zip(runs[0][1:], runs[1][1:], strict=True):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


@given(configs(), st.integers(0, 2**16), st.sampled_from(["zero", "resample", "mean"]), st.booleans(),
       st.sampled_from(CONVENTIONS))
def test_recomputing_the_reads_in_backward_changes_nothing(cfg, seed, ablation, per_example, conventions):
    # recompute_reads: the backward pass recomputes each layer's attention reader inputs from the writer
    # stack (prune._masked_read._reread) instead of keeping them, inside the RMS norm folded into the
    # projections (Llama) or around the layer norm (GPT-2); a model without a norm keeps them (Tracr).
    # The logits and the mask's gradient must be the kept run's (float64: rounding, see ATOL).
    import prune._masked_read as masked_read

    model = random_model(cfg, seed, conventions)
    clean, corrupt = torch.randint(0, cfg.vocab_size, (2, 2, 5))
    ablated = {"zero": None, "resample": model.writers(corrupt),
               "mean": model.writers(corrupt).mean(1, keepdim=True)}[ablation]
    z0 = torch.rand(*((2,) if per_example else ()), model.graph.n_edges, dtype=torch.float64)
    calls = []
    reread = masked_read._reread
    runs = []
    for recompute in (True, False):
        z = z0.clone().requires_grad_(True)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(masked_read, "_reread", lambda *a: calls.append(1) or reread(*a))
            out = model(clean, edge_mask=z, ablated=ablated, recompute_reads=recompute)
            out.pow(2).sum().backward()
        runs.append((out.detach(), z.grad))
    assert len(calls) == (0 if cfg.norm == "none" else cfg.n_layers)  # one reread per layer, in the first run
    torch.testing.assert_close(runs[0][0], runs[1][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(runs[0][1], runs[1][1], atol=1e-8, rtol=1e-8)


def test_reads_are_recomputed_in_half_precision_too():
    # In bf16 the RMS norm does not fold into the projections (it norms in float32, then converts);
    # recompute_reads then recomputes the inputs around it (prune._masked_read._RecomputedNorm). The plan
    # counts on it for CodeLlama-13B in bf16. Against the kept run: the same logits, and mask gradients
    # within bf16 rounding: a recomputed input may round differently from the kept one (8 bits, 2^-8
    # relative), through a few operations: 2^-6 of the largest. (Measured here: equal to the last bit.)
    import prune._masked_read as masked_read

    cfg = TransformerConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_head=4, d_mlp=16,
                            n_positions=8, norm="rmsnorm", activation="silu", gated_mlp=True, positional="rotary",
                            attn_bias=False, attn_out_bias=False, mlp_bias=False)
    model = random_model(cfg, 4).to(torch.bfloat16)
    clean, corrupt = torch.randint(0, 11, (2, 3, 6), generator=torch.Generator().manual_seed(5))
    ablated = model.writers(corrupt)
    z0 = torch.rand(model.graph.n_edges, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    calls, reread, runs = [], masked_read._reread, []
    for recompute in (True, False):
        z = z0.clone().requires_grad_(True)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(masked_read, "_reread", lambda *a: calls.append(1) or reread(*a))
            out = model(clean, edge_mask=z, ablated=ablated, recompute_reads=recompute)
            out.float().pow(2).sum().backward()
        runs.append((out.detach().float(), z.grad.float()))
    assert len(calls) == cfg.n_layers
    torch.testing.assert_close(runs[0][0], runs[1][0], atol=0, rtol=0)  # the forward pass is the same
    scale = runs[1][1].abs().max()
    assert scale > 0 and (runs[0][1] - runs[1][1]).abs().max() <= 2**-6 * scale


def test_backward_twice_through_one_graph_gives_the_same_gradient():
    # retain_graph: the second backward must start a fresh accumulation, not add to the first.
    cfg = TransformerConfig(vocab_size=7, d_model=8, n_layers=2, n_heads=2, d_head=4, d_mlp=8, n_positions=6)
    model = random_model(cfg, 3)
    z = torch.rand(model.graph.n_edges, dtype=torch.float64, requires_grad=True)
    loss = model(torch.randint(0, 7, (2, 4)), edge_mask=z).pow(2).sum()
    (first,) = torch.autograd.grad(loss, z, retain_graph=True)
    (second,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(first, second, atol=0, rtol=0)


@given(configs(), st.integers(0, 2**16))
def test_logits_at_positions_are_rows_of_the_full_logits(cfg, seed):
    model = random_model(cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (3, 5), generator=gen)
    positions = torch.rand(3, 5, generator=gen) < 0.4
    z = torch.rand(model.graph.n_edges, dtype=torch.float64, generator=gen)
    for kwargs in ({}, {"edge_mask": z}):
        rows = model(tokens, positions=positions, **kwargs)
        assert rows.shape == (int(positions.sum()), cfg.out_size)
        torch.testing.assert_close(rows, model(tokens, **kwargs)[positions], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="positions must be a bool mask"):
        model(tokens, positions=positions.long())


@given(configs(), st.integers(0, 2**16))
def test_run_with_cache_names_every_writer_and_they_sum_to_the_stream(cfg, seed):
    model = random_model(cfg, seed)
    tokens = torch.randint(0, cfg.vocab_size, (2, 5))
    attention_mask = torch.ones(2, 5, dtype=torch.long)
    attention_mask[1, :2] = 0
    logits, cache = model.run_with_cache(tokens, attention_mask=attention_mask)
    assert list(cache) == list(model.graph.writer_names)
    assert all(v.shape == (2, 5, cfg.d_model) and not v.requires_grad for v in cache.values())
    torch.testing.assert_close(logits, model(tokens, attention_mask=attention_mask), atol=0, rtol=0)
    torch.testing.assert_close(torch.stack(list(cache.values())), model.writers(tokens, attention_mask=attention_mask),
                               atol=0, rtol=0)
    stream = sum(cache.values())  # the residual stream before the final norm
    torch.testing.assert_close(model.unembed(model.ln_f(stream)), logits, atol=ATOL, rtol=0)


def test_run_with_cache_writers_unembed_to_the_logits_without_a_norm():
    cfg = TransformerConfig(vocab_size=7, d_model=8, n_layers=2, n_heads=3, d_head=4, d_mlp=8, n_positions=6,
                            norm="none", unembed_bias=True)
    model = random_model(cfg, 4)
    tokens = torch.randint(0, 7, (3, 6))
    logits, cache = model.run_with_cache(tokens)
    assert list(cache) == ["input", "a0.h0", "a0.h1", "a0.h2", "m0", "a1.h0", "a1.h1", "a1.h2", "m1"]
    torch.testing.assert_close(sum(cache.values()) @ model.W_U + model.b_U, logits, atol=ATOL, rtol=0)


def naive_masked_writers(model, tokens, z, nodes, ablated, cache):
    """Each writer recomputed from its readers' inputs, themselves mixed from ``cache`` edge by edge."""
    g, cfg = model.graph, model.cfg
    W = list(cache.values())
    abl = (lambda w: 0.0) if ablated is None else (lambda w: ablated[w])
    fixed = naive_fixed(model, tokens.shape[1])

    def reader_input(r):
        return fixed(r) + sum(z[w, r] * W[w] + (1 - z[w, r]) * abl(w) for w in range(g.n_visible_writers(r)))

    def node(w, out):  # what writer w writes under its node mask
        return nodes[w] * out + (1 - nodes[w]) * abl(w)

    rotary = model._rotary(tokens.shape[1], tokens.device, torch.float64) if cfg.positional == "rotary" else None
    want = {"input": node(0, naive_input_writer(model, tokens))}
    for l, block in enumerate(model.blocks):
        x = [torch.stack([block.ln1(reader_input(g.head_reader(l, h, port))) for h in range(cfg.n_heads)])
             for port in "qkv"]
        heads = block.attention(*x, None, rotary, bias_share=g.conventions == "ours")
        for h in range(cfg.n_heads):
            want[f"a{l}.h{h}"] = node(g.head_writer(l, h), heads[h])
        want[f"m{l}"] = node(g.mlp_writer(l), block.mlp(block.ln2(reader_input(g.mlp_reader(l)))))
    return want, model.unembed(model.ln_f(reader_input(g.logits_reader)))


@given(cfg=configs(), seed=st.integers(0, 2**16), ablation=st.sampled_from(ABLATIONS),
       conventions=st.sampled_from(CONVENTIONS), data=st.data())
def test_masked_run_with_cache_holds_the_writers_its_readers_see(cfg, seed, ablation, conventions, data):
    model = random_model(cfg, seed, conventions)
    g = model.graph
    clean, corrupt = torch.randint(0, cfg.vocab_size, (2, 3, 4))
    # all masks one: the plain run's writers
    ones = torch.ones(g.n_edges, dtype=torch.float64)
    _, cache = model.run_with_cache(clean, edge_mask=ones)
    torch.testing.assert_close(torch.stack(list(cache.values())), model.writers(clean), atol=ATOL, rtol=0)
    # a circuit with node masks: every writer as the naive per-edge reference computes it from the others
    keep = data.draw(st.lists(st.sampled_from([0.0, 1.0, 0.3]), min_size=g.n_edges, max_size=g.n_edges))
    z = torch.tensor(keep, dtype=torch.float64)
    nodes = torch.rand(g.n_writers, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ablated = {"zero": None, "resample": model.writers(corrupt),
               "mean": model.writers(corrupt).mean(1, keepdim=True)}[ablation]
    for grad in (False, True):  # sparse reads (evaluation) and dense reads (training)
        with torch.set_grad_enabled(grad):
            logits, cache = model.run_with_cache(
                clean, edge_mask=z.clone().requires_grad_(grad), node_mask=nodes, ablated=ablated)
        assert list(cache) == list(g.writer_names)
        assert all(not v.requires_grad for v in cache.values())
        want, want_logits = naive_masked_writers(model, clean, g.dense(z), nodes, ablated, cache)
        for name in g.writer_names:
            torch.testing.assert_close(cache[name], want[name], atol=ATOL, rtol=0)
        torch.testing.assert_close(logits.detach(), want_logits, atol=ATOL, rtol=0)


@given(configs(), st.integers(0, 2**16), st.sampled_from(["resample", "mean"]), st.data())
def test_resample_and_mean_stand_ins_make_the_conventions_agree(cfg, seed, ablation, data):
    # Under EAP-IG's conventions every writer is ours minus a part that does not depend on the prompt (the
    # position embedding, b_O / H); a stand-in from the same model differs from ours by the same part, so
    # z * clean + (1 - z) * stand-in differs by it whatever z is, and the fixed stream adds it back.
    ours = random_model(cfg, seed)
    theirs = ours.with_conventions("eap-ig")
    clean, corrupt = torch.randint(0, cfg.vocab_size, (2, 3, 5))
    z = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 1.0, 0.3]), min_size=ours.graph.n_edges,
                                        max_size=ours.graph.n_edges)), dtype=torch.float64)

    def stand_in(model):
        w = model.writers(corrupt)
        return w if ablation == "resample" else w.mean(1, keepdim=True)
    want = ours(clean, edge_mask=z, ablated=stand_in(ours))
    torch.testing.assert_close(theirs(clean, edge_mask=z, ablated=stand_in(theirs)), want, atol=ATOL, rtol=0)


GQA = TransformerConfig(vocab_size=20, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_head=4, d_mlp=32,
                        n_positions=16, norm="rmsnorm", positional="rotary", gated_mlp=True, activation="silu",
                        attn_out_bias=False, mlp_bias=False)


def _tied_columns(model) -> torch.Tensor:
    """``[R]``: each reader's column of a tied mask (a key or value reader: its group's first head's)."""
    g, H, group = model.graph, model.cfg.n_heads, model.cfg.n_heads // model.cfg.kv_heads
    src = torch.arange(g.n_readers)
    for l in range(g.n_layers):
        for port in "kv":
            for h in range(H):
                src[g.head_reader(l, h, port)] = g.head_reader(l, h - h % group, port)
    return src


@pytest.mark.parametrize("per_example", [False, True])
@pytest.mark.parametrize("ablation", ["zero", "resample"])
def test_tied_key_value_masks_read_once_per_group_and_give_the_tied_gradient(per_example, ablation):
    """With the key and value masks tied within each group, reading and projecting them once per group
    (``tied_kv``) gives the untied run's logits, and the gradient of each tied gate (the sum over the
    columns it sets), to float64 rounding (1e-12 of the largest)."""
    model = random_model(GQA, 0)
    g = model.graph
    tokens = torch.randint(0, 20, (3, 6), generator=torch.Generator().manual_seed(1))
    ablated = None if ablation == "zero" else model.writers(torch.randint(0, 20, (3, 6)))
    valid = g.dense(torch.ones(g.n_edges, dtype=torch.float64))  # [W, R]: 1 on the graph's edges
    shape = (3, g.n_writers, g.n_readers) if per_example else (g.n_writers, g.n_readers)
    gates = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = []
    for tied, recompute in ((False, False), (True, False), (True, True)):  # recompute_reads: the same, tied too
        p = gates.clone().requires_grad_(True)
        logits = model(tokens, edge_mask=p[..., _tied_columns(model)] * valid, ablated=ablated, tied_kv=tied,
                       recompute_reads=recompute)
        logits.square().sum().backward()
        results.append((logits.detach(), p.grad))
    (untied, g_untied), *others = results
    for tied, g_tied in others:
        assert torch.allclose(tied, untied, rtol=0, atol=1e-12 * untied.abs().max())
        assert torch.allclose(g_tied, g_untied, rtol=0, atol=1e-12 * g_untied.abs().max())
    assert g_untied.abs().max() > 0


def test_tied_kv_refuses_untied_masks_and_models_without_groups():
    model = random_model(GQA, 0)
    tokens = torch.zeros(1, 3, dtype=torch.long)
    z = torch.rand(model.graph.n_edges, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="layer 0's key or value masks differ within a key-value group"):
        model(tokens, edge_mask=z, tied_kv=True)
    with pytest.raises(ValueError, match="it needs an edge_mask"):
        model(tokens, tied_kv=True)
    plain = random_model(TransformerConfig(vocab_size=5, d_model=4, n_layers=1, n_heads=2, d_head=2, d_mlp=4,
                                           n_positions=4), 0)
    with pytest.raises(ValueError, match="tied_kv is for grouped-query attention; this model has 2 query and 2"):
        plain(tokens, edge_mask=torch.ones(plain.graph.n_edges, dtype=torch.float64), tied_kv=True)
