"""Weights stored as bf16 on the CPU, computed in float32: each kernel against the float32 product on the same
(widened) weights, for the row counts each path takes, and the whole tiny network with bf16-stored weights against
the same network holding those weights widened to float32."""

from __future__ import annotations

import threading

import numpy as np
import paddle
import pytest
from paddle import nn

from model import cpu_kernels
from model.checkpoint import keys
from model.checkpoint.loader import load_janus
from model.kv_cache import RowBatch
from model.layer_ops import BF16_ROWS_MAX, embedding, linear, matmul_weight
from model.tiny_checkpoint import build_tiny_checkpoint
from tests.model.bf16_values import assert_float32_close, bf16_bits, bf16_to_float32
from tests.model.cached_loops import greedy_image, greedy_text, rows_of


@pytest.fixture
def lib(kernel_build):
    return cpu_kernels.library()


def _bf16_linear(rng: np.random.Generator, K: int, N: int, bias: bool) -> tuple[nn.Linear, np.ndarray, np.ndarray]:
    """A Linear layer holding bf16 weights (as the loader leaves it), and its weight and bias in float32."""
    layer = nn.Linear(K, N, bias_attr=None if bias else False)
    bits = bf16_bits(rng, K, N, scale=K**-0.5)
    layer.weight = paddle.base.framework.EagerParamBase.from_tensor(paddle.to_tensor(bits, dtype="bfloat16"))
    b = rng.standard_normal(N).astype(np.float32)
    if bias:
        layer.bias.set_value(b)
    return layer, bf16_to_float32(bits), b if bias else np.zeros(N, np.float32)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 9, 17, 32, 300])
@pytest.mark.parametrize(("K", "N"), [(64, 96), (203, 77), (1000, 300)])
def test_bf16_projection_matches_the_float32_product_on_the_widened_weights(lib, rows, K, N):
    rng = np.random.default_rng(rows * 1000 + K)
    layer, w, b = _bf16_linear(rng, K, N, bias=True)
    x = rng.standard_normal((rows, K)).astype(np.float32)
    ours = linear(layer, paddle.to_tensor(x))
    assert ours.dtype == paddle.float32 and ours.shape == [rows, N]
    assert_float32_close(ours.numpy(), x, w, b)


def test_bf16_prefill_product_over_several_column_panels(lib):
    """Prefill-sized products widen 32 MiB panels of whole columns: a weight of more than one panel, with a part
    panel at the end."""
    rng = np.random.default_rng(9)
    layer, w, b = _bf16_linear(rng, 2048, 4100, bias=True)
    x = rng.standard_normal((130, 2048)).astype(np.float32)
    assert_float32_close(linear(layer, paddle.to_tensor(x)).numpy(), x, w, b)


def test_bf16_products_stay_exact_as_sizes_change_and_on_several_threads_at_once(lib):
    """Each thread keeps its buffer of widened weights from call to call: a product after a larger one (the buffer
    reused), after a smaller one (the buffer grown), and on several threads at once (a buffer each) are all
    exact."""
    rng = np.random.default_rng(11)
    cases = [(_bf16_linear(rng, K, N, bias=True), rng.standard_normal((rows, K)).astype(np.float32))
             for K, N, rows in [(2048, 4100, 130), (256, 96, 200), (64, 40, 20), (1024, 3000, 150)]]

    def run(order: list[int]) -> None:
        for i in order:
            (layer, w, b), x = cases[i]
            assert_float32_close(linear(layer, paddle.to_tensor(x)).numpy(), x, w, b)

    run([0, 1, 2, 1, 3, 0])
    errors: list[BaseException] = []

    def on_a_thread(order: list[int]) -> None:
        try:
            run(order)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=on_a_thread, args=(order,)) for order in ([2, 3, 1], [1, 0, 2], [3, 2, 0])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


@pytest.mark.parametrize("rows", [1, 4, 16, 600])
def test_each_bf16_kernel_directly_without_bias(lib, rows):
    """Both kernels at every row count (not only the one `linear` picks), prefill lengths included."""
    rng = np.random.default_rng(rows)
    K, N = 384, 136
    bits = bf16_bits(rng, K, N, scale=K**-0.5)
    weight = paddle.to_tensor(bits, dtype="bfloat16")
    x = rng.standard_normal((rows, K)).astype(np.float32)
    xt = paddle.to_tensor(x)
    for kernel in (lib.janus_linear_rows_bf16, lib.janus_linear_bf16):
        out = paddle.full([rows, N], float("nan"), "float32")
        kernel(xt.data_ptr(), weight.data_ptr(), None, out.data_ptr(), rows, K, N)
        assert_float32_close(out.numpy(), x, bf16_to_float32(bits), np.zeros(N))


def test_bf16_projection_of_a_batch_of_sequences_and_a_strided_input(lib):
    rng = np.random.default_rng(5)
    layer, w, b = _bf16_linear(rng, 48, 40, bias=False)
    x = rng.standard_normal((3, 7, 48)).astype(np.float32)
    out = linear(layer, paddle.to_tensor(x))
    assert out.shape == [3, 7, 40]
    assert_float32_close(out.numpy().reshape(21, 40), x.reshape(21, 48), w, b)
    last = paddle.to_tensor(x)[:, -1]  # a view of every row's last position, as the heads are given
    assert_float32_close(matmul_weight(last, layer.weight).numpy(), x[:, -1], w, b)


def test_the_row_threshold_sends_rows_to_both_kernels(monkeypatch, lib):
    """The few-row kernel up to BF16_ROWS_MAX rows, the tiled one above: each is exercised by the tests above."""
    called: list[str] = []

    class Spy:
        def __getattr__(self, name):
            called.append(name)
            return getattr(lib, name)

    monkeypatch.setattr(cpu_kernels, "library", lambda: Spy())
    rng = np.random.default_rng(1)
    layer, _, _ = _bf16_linear(rng, 16, 24, bias=False)
    for rows in (1, BF16_ROWS_MAX, BF16_ROWS_MAX + 1):
        linear(layer, paddle.to_tensor(rng.standard_normal((rows, 16)).astype(np.float32)))
    assert called == ["janus_linear_rows_bf16", "janus_linear_rows_bf16", "janus_linear_bf16"]


def test_bf16_embedding_lookup_widens_exactly_and_refuses_ids_outside_the_table():
    rng = np.random.default_rng(2)
    bits = bf16_bits(rng, 50, 24)
    layer = nn.Embedding(50, 24)
    layer.weight = paddle.base.framework.EagerParamBase.from_tensor(paddle.to_tensor(bits, dtype="bfloat16"))
    ids = np.array([[3, 0, 49], [7, 7, 12]])
    out = embedding(layer, paddle.to_tensor(ids))
    assert out.dtype == paddle.float32
    np.testing.assert_array_equal(out.numpy(), bf16_to_float32(bits)[ids])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 50\)"):
        embedding(layer, paddle.to_tensor([[50]]))


# the whole network


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-bf16"), preset="tiny", seed=0, dtype="bfloat16")


@pytest.fixture(scope="module")
def both_models(bf16_dir):
    """The bf16 checkpoint loaded keeping bf16 weights, and loaded widening every weight to float32."""
    paddle.set_grad_enabled(False)
    kept, kept_report = load_janus(bf16_dir, cache_dir=False, keep_bf16=True)
    widened, widened_report = load_janus(bf16_dir, cache_dir=False)
    assert (kept_report.weights, widened_report.weights) == ("bfloat16", "float32")
    return kept, widened


def test_projections_and_embeddings_stay_bf16_and_the_rest_float32(both_models):
    kept, widened = both_models
    storable = keys.bf16_storable_names(kept)
    assert "language_model.lm_head.weight" in storable and "language_model.llama.embed_tokens.weight" in storable
    for name, param in kept.named_parameters():
        assert param.dtype == (paddle.bfloat16 if name in storable else paddle.float32), name
    assert {p.dtype for p in widened.parameters()} == {paddle.float32}
    exact = dict(widened.named_parameters())
    for name, param in kept.named_parameters():
        np.testing.assert_array_equal(param.astype("float32").numpy(), exact[name].numpy(), err_msg=name)


def _prompt(seed: int, length: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(10, vocab, length).astype(np.int64)


def test_understanding_logits_and_greedy_text_match_float32_weights(both_models):
    kept, widened = both_models
    cfg = kept.cfg
    rng = np.random.default_rng(4)
    pixels = paddle.to_tensor(rng.uniform(-1, 1, (1, 3, cfg.vision.image_size, cfg.vision.image_size))
                              .astype(np.float32))
    image_id = 5
    ids = np.concatenate([[1, 2], np.full(cfg.vision.num_tokens, image_id), _prompt(1, 9, cfg.language.vocab_size)])
    logits = []
    for model in (kept, widened):
        embeds = model.embed_prompt(paddle.to_tensor(ids[None]), model.encode_images(pixels), image_id)
        cache, tables = rows_of(model, 1, len(ids) + 4)
        logits.append(model.text_logits(model.extend(embeds, cache, RowBatch.of(tables, [0]))).numpy())
    np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-5)
    prompt = _prompt(2, 12, cfg.language.vocab_size)
    texts = [greedy_text(model, prompt, None, image_id, eos_id=-1, max_new_tokens=16) for model in (kept, widened)]
    assert texts[0] == texts[1] and len(texts[0]) == 16


def test_generation_logits_and_greedy_image_tokens_match_float32_weights(both_models):
    kept, widened = both_models
    prompt = _prompt(3, 10, kept.cfg.language.vocab_size)
    logits = []
    for model in (kept, widened):
        cache, tables = rows_of(model, 2, 32)
        hidden = model.extend(model.embed_text(paddle.to_tensor(np.stack([prompt, prompt]))), cache,
                              RowBatch.of(tables, [0, 0]))
        logits.append(model.image_logits(hidden[:, -1]).numpy())
    np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-5)
    tokens = [greedy_image(model, prompt, pad_id=0, cfg_weight=5.0) for model in (kept, widened)]
    np.testing.assert_array_equal(tokens[0], tokens[1])
    assert tokens[0].shape == (1, kept.cfg.gen_vision.num_tokens) and len(set(tokens[0][0])) > 1
