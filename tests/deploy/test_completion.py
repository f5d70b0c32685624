import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.deploy.completion import Completion, TextStream
from scalelab.deploy.sampling import InvalidRequest, SamplingParams, make_generator
from tests.deploy.conftest import CONTEXT, FAMILIES

ALPHABET = "ab é世\n."


def run(model, prompt: str, **params) -> tuple[str, Completion, list]:
    completion = Completion(model, model.tokenizer.encode(prompt), SamplingParams(**params), make_generator(0))
    pieces = [piece for step in completion for piece in step]
    return "".join(piece.text for piece in pieces), completion, pieces


def expected_cut(tokenizer, ids: list[int], stops: list[str]) -> str:
    """The text as it stands after the first token whose text completes a stop string, cut before it."""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end])
        found = [text.find(stop) for stop in stops if stop in text]
        if found:
            return text[:min(found)]
    return tokenizer.decode(ids)


@settings(max_examples=200, deadline=None)
@given(st.text(ALPHABET, max_size=40), st.lists(st.text(ALPHABET, min_size=1, max_size=3), max_size=3))
def test_text_stream_releases_the_text_cut_at_the_first_stop(prepared, text, stops):
    tokenizer = prepared.tokenizer
    ids = tokenizer.encode(text)
    stream = TextStream(tokenizer, stops)
    pieces = []
    for token in ids:
        pieces += stream.push(token, None, None)
        if stream.stopped:
            break
    pieces += stream.finish()
    assert "".join(piece.text for piece in pieces) == expected_cut(tokenizer, ids, stops)
    assert [piece.token for piece in pieces] == ids[:len(pieces)]


@pytest.mark.parametrize("family", FAMILIES)
def test_echo_scores_the_prompt_with_the_models_logprobs(models, family):
    model = models[family]
    prompt = "the data model loss curve"
    text, completion, pieces = run(model, prompt, max_tokens=0, echo=True, logprobs=2)
    assert text == prompt and completion.finish_reason == "length" and completion.completion_tokens == 0
    ids = [model.eod_id, *model.tokenizer.encode(prompt)]
    _, every = model.prefill(ids, every_position=True)
    torch.testing.assert_close(torch.tensor([piece.logprob for piece in pieces]),
                               every[torch.arange(len(ids) - 1), ids[1:]])
    assert all(len(piece.top) == 2 and max(piece.top.values()) >= piece.logprob - 1e-6 for piece in pieces)


@pytest.mark.parametrize("family", FAMILIES)
def test_finish_reasons_and_stop_strings(models, family):
    model = models[family]
    never_end = {model.eod_id: -100.0}
    text, completion, _ = run(model, "the data", max_tokens=12, logit_bias=never_end)
    assert completion.finish_reason == "length" and completion.completion_tokens == 12
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut, completion, _ = run(model, "the data", max_tokens=12, logit_bias=never_end, stop=[stop])
    assert cut == text[:text.find(stop)] and completion.finish_reason == "stop"
    ended, completion, _ = run(model, "the data", max_tokens=12, logit_bias={model.eod_id: 100.0})
    assert ended == "" and completion.finish_reason == "stop" and completion.completion_tokens == 0


def test_same_seed_same_text(models):
    model = models["transformer"]
    assert run(model, "the", max_tokens=20, seed=3)[0] == run(model, "the", max_tokens=20, seed=3)[0]


def test_prompt_and_completion_must_fit_the_context(models):
    model = models["transformer"]
    ids = model.tokenizer.encode("data " * 60)
    with pytest.raises(InvalidRequest, match=rf"maximum context length is {CONTEXT - 1} tokens.*"
                                             rf"{len(ids)} in your prompt; 16 for the completion") as error:
        Completion(model, ids, SamplingParams(), make_generator(0))
    assert error.value.code == "context_length_exceeded" and error.value.param == "prompt"
    with pytest.raises(InvalidRequest, match="token ids must lie"):
        Completion(model, [model.vocab_size], SamplingParams(), make_generator(0))
