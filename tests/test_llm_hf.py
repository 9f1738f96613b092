"""The local transformers backend on a tiny random Llama: batching, stops, lengths, per-row sampling."""

from __future__ import annotations

import pytest
import torch

from r3rag.llm.base import SamplingParams
from r3rag.llm.hf import HFGenerator, RowSampling, cache_keyword, sample_next_tokens
from r3rag.steps import build_messages, render_prompt
from tiny_llm import tiny_model, tiny_tokenizer

QUESTIONS = [
    "Who?",
    "Who directed the film that won the award in the city?",
    "Which film?",
    "The question is long: which director of which film won which award, and in what city was it?",
    "Where?",
]


@pytest.fixture(scope="module")
def generator() -> HFGenerator:
    return HFGenerator(tiny_model(), tiny_tokenizer(), batch_size=8)


def conversations(n: int = len(QUESTIONS)) -> list[list[dict[str, str]]]:
    return [build_messages(q) for q in QUESTIONS[:n]]


def test_prompt_ids_are_the_rendered_chat_template(generator: HFGenerator) -> None:
    conv = conversations(1)[0]
    (completion,) = generator.generate([conv], SamplingParams(max_new_tokens=2))
    expected = tiny_tokenizer()(render_prompt(tiny_tokenizer(), conv), add_special_tokens=False)["input_ids"]
    assert completion.prompt_token_ids == expected
    assert completion.prompt_tokens == len(expected)
    assert completion.completion_tokens == len(completion.completion_token_ids) == 2


def test_left_padded_batch_matches_unbatched_hf_generate(generator: HFGenerator) -> None:
    """Greedy tokens of each row of a padded batch equal transformers' own generate on that prompt alone."""
    completions = generator.generate(conversations(), SamplingParams(max_new_tokens=12))
    for completion in completions:
        ids = torch.tensor([completion.prompt_token_ids])
        reference = generator.model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12
        )[0, ids.shape[1] :].tolist()
        assert completion.completion_token_ids == reference


def test_small_batches_keep_order_and_results(generator: HFGenerator) -> None:
    one_batch = generator.generate(conversations(), SamplingParams(max_new_tokens=8))
    small = HFGenerator(generator.model, generator.tokenizer, batch_size=2)
    in_pairs = small.generate(conversations(), SamplingParams(max_new_tokens=8))
    assert [c.completion_token_ids for c in in_pairs] == [c.completion_token_ids for c in one_batch]
    assert [c.prompt_token_ids for c in in_pairs] == [c.prompt_token_ids for c in one_batch]


def test_stop_string_cuts_the_text_but_keeps_the_sampled_tokens(generator: HFGenerator) -> None:
    conv = conversations(2)[1:]
    (free,) = generator.generate(conv, SamplingParams(max_new_tokens=30))
    stop = free.text[10:13]
    assert len(stop) == 3
    (stopped,) = generator.generate(conv, SamplingParams(max_new_tokens=30, stop=(stop,)))
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.index(stop)]
    assert free.completion_token_ids[: stopped.completion_tokens] == stopped.completion_token_ids
    assert stop in generator.tokenizer.decode(stopped.completion_token_ids)
    assert stopped.completion_tokens < free.completion_tokens


def test_stop_token_ends_the_row_and_is_kept_in_the_ids(generator: HFGenerator) -> None:
    conv = conversations(3)[2:]
    (free,) = generator.generate(conv, SamplingParams(max_new_tokens=20))
    token = free.completion_token_ids[6]
    first = free.completion_token_ids.index(token)
    (stopped,) = generator.generate(conv, SamplingParams(max_new_tokens=20, stop_token_ids=(token,)))
    assert stopped.finish_reason == "stop"
    assert stopped.completion_token_ids == free.completion_token_ids[: first + 1]
    assert stopped.text == generator.tokenizer.decode(
        free.completion_token_ids[:first], skip_special_tokens=True
    )


def test_end_of_turn_ids_come_from_the_tokenizer_and_the_generation_config() -> None:
    model, tokenizer = tiny_model(), tiny_tokenizer()
    convs = conversations(1)
    (free,) = HFGenerator(model, tokenizer).generate(convs, SamplingParams(max_new_tokens=10))
    first = free.completion_token_ids[0]
    model.generation_config.eos_token_id = [first]  # a model may list several end-of-turn ids
    generator = HFGenerator(model, tokenizer)
    assert generator.eos_ids == {first, tokenizer.eos_token_id}
    (completion,) = generator.generate(convs, SamplingParams(max_new_tokens=10))
    assert completion.finish_reason == "stop"
    assert completion.completion_token_ids == [first]
    assert completion.text == ""


def test_max_new_tokens_is_per_row(generator: HFGenerator) -> None:
    lengths = [3, 9, 1, 6, 4]
    completions = generator.generate(conversations(), [SamplingParams(max_new_tokens=n) for n in lengths])
    for completion, n in zip(completions, lengths, strict=True):
        assert completion.finish_reason == "length"
        assert completion.completion_tokens == n


def test_per_row_temperature_reaches_the_sampler(generator: HFGenerator) -> None:
    """Greedy rows of a mixed batch decode as greedy; hot rows sample, reproducibly from their seed."""
    convs = conversations(4)
    greedy = generator.generate(convs, SamplingParams(max_new_tokens=16))
    mixed_params = [
        SamplingParams(temperature=0.0, max_new_tokens=16),
        SamplingParams(temperature=1.0, max_new_tokens=16, seed=1),
        SamplingParams(temperature=0.0, max_new_tokens=16),
        SamplingParams(temperature=1.0, max_new_tokens=16, seed=2),
    ]
    mixed = generator.generate(convs, mixed_params)
    assert mixed[0].completion_token_ids == greedy[0].completion_token_ids
    assert mixed[2].completion_token_ids == greedy[2].completion_token_ids
    assert mixed[1].completion_token_ids != greedy[1].completion_token_ids
    assert mixed[3].completion_token_ids != greedy[3].completion_token_ids
    (alone,) = generator.generate([convs[1]], mixed_params[1])
    assert alone.completion_token_ids == mixed[1].completion_token_ids


def test_sampler_scales_each_row_by_its_own_temperature() -> None:
    rows = 4000
    logits = torch.tensor([[0.0, 2.0]]).repeat(rows, 1)
    temperatures = [0.05, 50.0] * (rows // 2)
    generators = [torch.Generator().manual_seed(0)] * rows
    sampling = RowSampling.build(temperatures, [1.0] * rows, generators, logits.device)
    tokens = sample_next_tokens(logits, sampling)
    cold, hot = tokens[0::2].float().mean().item(), tokens[1::2].float().mean().item()
    assert cold == 1.0  # p(token 1) = 1 - 4e-18 at T=0.05
    assert 0.45 < hot < 0.57  # p(token 1) = 0.51 at T=50


def test_sampler_top_p_keeps_the_smallest_nucleus() -> None:
    rows = 2000
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(rows, 1)
    top_ps = [0.6, 1.0] * (rows // 2)
    generator = torch.Generator().manual_seed(0)
    tokens = sample_next_tokens(
        logits, RowSampling.build([1.0] * rows, top_ps, [generator] * rows, logits.device)
    )
    assert set(tokens[0::2].tolist()) == {0, 1}
    assert set(tokens[1::2].tolist()) == {0, 1, 2}


def test_bf16_autocast_generates(generator: HFGenerator) -> None:
    """Batched steps run under autocast; the last row left decodes on in fp32 over its bf16 cache."""
    bf16 = HFGenerator(generator.model, generator.tokenizer, bf16=True)
    lengths = [2, 5, 9]
    completions = bf16.generate(conversations(3), [SamplingParams(max_new_tokens=n) for n in lengths])
    assert [c.completion_tokens for c in completions] == lengths
    assert (
        generator.model.lm_head.weight.dtype == torch.float32
    )  # autocast casts on the fly, weights stay fp32


def test_prefill_in_chunks_of_rows_decodes_what_one_pass_does(generator: HFGenerator) -> None:
    """Prompts prefilled a row or two at a time, their caches joined, decode the same tokens with the same
    log-probabilities as one forward pass over the whole batch (rows finishing early included)."""
    sampling = [SamplingParams(max_new_tokens=n, logprobs=True) for n in (3, 12, 7, 12, 1)]
    whole = generator.generate(conversations(), sampling)
    width = max(c.prompt_tokens for c in whole)
    for rows in (1, 2):
        chunked = HFGenerator(generator.model, generator.tokenizer, batch_size=8, prefill_tokens=rows * width)
        parts = chunked.generate(conversations(), sampling)
        assert [c.completion_token_ids for c in parts] == [c.completion_token_ids for c in whole]
        for a, b in zip(parts, whole, strict=True):
            assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)


def test_prefill_chunks_join_the_cache_of_every_layer(generator: HFGenerator) -> None:
    """The joined cache has every row of every layer, in order (a chunk lost or reordered would decode
    another row's continuation)."""
    chunked = HFGenerator(generator.model, generator.tokenizer, batch_size=8, prefill_tokens=1)
    ids = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13]])
    ones = torch.ones_like(ids)
    positions = ones.cumsum(-1) - 1
    with torch.inference_mode():
        logits, cache = chunked._prefill(ids, ones, positions, autocast=False)
        whole, whole_cache = HFGenerator(generator.model, generator.tokenizer)._prefill(
            ids, ones, positions, autocast=False
        )
    assert len(cache.layers) == len(whole_cache.layers) == generator.model.config.num_hidden_layers
    for mine, reference in zip(cache.layers, whole_cache.layers, strict=True):
        assert torch.allclose(mine.keys, reference.keys, atol=1e-4, rtol=1e-4)
        assert torch.allclose(mine.values, reference.values, atol=1e-4, rtol=1e-4)
    assert torch.allclose(logits, whole, atol=1e-4, rtol=1e-4)


def test_a_bf16_model_generates_without_autocast(generator: HFGenerator) -> None:
    """bf16 weights (``from_name(..., bf16=True)`` loads them so) are never autocast; an fp32 model is."""
    model = tiny_model().to(torch.bfloat16)
    bf16 = HFGenerator(model, generator.tokenizer, bf16=True)
    assert not bf16.autocast
    assert HFGenerator(generator.model, generator.tokenizer, bf16=True).autocast
    completions = bf16.generate(conversations(3), [SamplingParams(max_new_tokens=n) for n in (2, 5, 9)])
    assert [c.completion_tokens for c in completions] == [2, 5, 9]


def test_prefill_tokens_must_be_positive(generator: HFGenerator) -> None:
    with pytest.raises(ValueError, match="prefill_tokens"):
        HFGenerator(generator.model, generator.tokenizer, prefill_tokens=0)


def test_sampling_list_must_match_the_conversations(generator: HFGenerator) -> None:
    with pytest.raises(ValueError, match="2 sampling settings for 3 conversations"):
        generator.generate(conversations(3), [SamplingParams(), SamplingParams()])


def test_the_decode_loop_never_waits_on_the_device(generator: HFGenerator, monkeypatch) -> None:
    """Outside the model's forward passes the loop runs no operation that would make the host wait for a GPU
    (``nonzero``, ``.item()``, ``bool(tensor)``): on a GPU the only sync of a decoded token is reading its
    tokens back. Pinned on the CPU by watching every aten op the loop dispatches, with a
    mixed batch (greedy, sampled with and without a seed, top-p, log-probs, rows finishing early)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    syncing = {"nonzero", "_local_scalar_dense", "is_nonzero", "equal", "masked_select", "item"}
    seen: list[str] = []
    inside_model = [False]

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not inside_model[0]:
                seen.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    forward = generator._forward

    def model_forward(*args, **kwargs):
        inside_model[0] = True
        try:
            return forward(*args, **kwargs)
        finally:
            inside_model[0] = False

    monkeypatch.setattr(generator, "_forward", model_forward)
    sampling = [
        SamplingParams(max_new_tokens=3),
        SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=9, seed=3, logprobs=True),
        SamplingParams(temperature=1.0, max_new_tokens=6),
        SamplingParams(max_new_tokens=9, logprobs=True),
    ]
    with Watch():
        completions = generator.generate(conversations(4), sampling)
    assert [c.completion_tokens for c in completions] == [3, 9, 6, 9]
    assert seen and not syncing & set(seen), sorted(syncing & set(seen))


def test_the_kv_cache_goes_by_the_keyword_the_installed_transformers_takes(generator: HFGenerator) -> None:
    """transformers 5.x takes ``cache`` and warns that ``past_key_values`` goes away in 5.40; the floor (4.56)
    has only ``past_key_values``. Generating with warnings as errors shows no deprecated keyword is used."""
    import inspect
    import warnings

    takes_cache = "cache" in inspect.signature(generator.model.forward).parameters
    assert generator.cache_keyword == ("cache" if takes_cache else "past_key_values")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        generator.generate(conversations(2), SamplingParams(max_new_tokens=3))

    class Wrapper(torch.nn.Module):  # a forward of **kwargs only (a wrapper): the name every version takes
        def forward(self, **kwargs: object) -> None: ...

    assert cache_keyword(Wrapper()) == "past_key_values"
