import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.data.tokenizer import EOD
from scalelab.deploy.completion import Completion, TextStream
from scalelab.deploy.params import InvalidRequest, SamplingParams
from scalelab.deploy.sampling import make_generator
from tests.deploy.conftest import CONTEXT, FAMILIES

ALPHABET = "ab é世\n."


def run(model, prompt: str | list[int], **params) -> tuple[str, Completion, list]:
    completion = Completion(model, prompt, SamplingParams(**params), make_generator(0))
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
    text = "data " * 60
    read = len(model.tokenizer.encode(text)) + 1  # the end-of-document token, then the text
    with pytest.raises(InvalidRequest, match=rf"maximum context length is {CONTEXT} tokens.*"
                                             rf"{read} in your prompt; 16 for the completion") as error:
        Completion(model, text, SamplingParams(), make_generator(0))
    assert error.value.code == "context_length_exceeded" and error.value.param == "prompt"
    with pytest.raises(InvalidRequest, match="token ids must lie"):
        Completion(model, [model.vocab_size], SamplingParams(), make_generator(0))
    with pytest.raises(InvalidRequest, match="at least one token"):
        Completion(model, [], SamplingParams(), make_generator(0))
    with pytest.raises(InvalidRequest, match=r"U\+D800") as error:
        Completion(model, "the \ud800", SamplingParams(), make_generator(0))
    assert error.value.param == "prompt"


class Recording:
    """A model that notes the token ids each prefill reads."""

    def __init__(self, model):
        self.model = model
        self.read = []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def prefill(self, ids, every_position=False):
        self.read.append(list(ids))
        return self.model.prefill(ids, every_position)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_text_is_read_after_one_eod_and_token_ids_as_given(models, family):
    model = Recording(models[family])
    eod = model.eod_id
    for text in ("the data", EOD + "the data", ""):  # text that spells the token stays text
        _, completion, _ = run(model, text, max_tokens=1)
        assert model.read[-1] == [eod, *model.tokenizer.encode(text)] and model.read[-1].count(eod) == 1
        assert completion.prompt_tokens == len(model.read[-1])
    ids = model.tokenizer.encode("the data")
    text, completion, pieces = run(model, ids, max_tokens=0, echo=True, logprobs=1)
    assert model.read[-1] == ids and completion.prompt_tokens == len(ids)
    # Nothing comes before the first token read, so it has no log-probability, as in OpenAI's echo.
    assert text == "the data" and pieces[0].logprob is None and None not in [p.logprob for p in pieces[1:]]
