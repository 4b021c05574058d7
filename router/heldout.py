"""The evaluation generator: prompts written apart from the training generator (`router.phrasings`), with
other words and other shapes, the way people who never saw this project's templates ask. Its row in the
router report is the honest one: a router that only learned the training framings fails here.

Rows come from each task's validation split (and out-of-domain data), never from the split the router is
fit on. Out-of-scope prompts put the same kinds of input (a review, a paragraph, an exchange) to jobs no
adapter does, so the kind of text alone cannot decide the route. This module must not import
`router.phrasings`; it shares only the surface helpers of `router.textvary`.
"""

from __future__ import annotations

import random

from router import textvary as tv

# {text}: the input; {q}: the question (QA only). Each frame is one way of asking, in this module's words.
FRAMES: dict[str, tuple[str, ...]] = {
    "qa": (
        'Here is a paragraph: "{text}" Question: {q}', "Read: '{text}' {q}", "Given this background: {text}\n\n{q}",
        "{q}\n(source: {text})", "From the excerpt below, {q_lc}\n---\n{text}\n---",
        "Consider the following. {text} With that in mind, {q_lc}", "My notes say: {text}\nAccording to my notes, {q_lc}",
        "Paragraph >> {text}\nQuery >> {q}", "{text}\n\nBased only on what's written there: {q}",
        "I'm studying this bit: \u00ab{text}\u00bb. {q}", "Document:\n{text}\n\nFind in the document: {q}",
        "hey so i've got this snippet - {text} - {q_lc}", "Pull the answer out of this: {text} // {q}",
    ),
    "sentiment": (
        'Does the writer of this seem pleased? "{text}"', "{text}\n\nthumbs up or thumbs down?",
        "Rate the mood of this comment (upbeat or downbeat): {text}", "Would you say this customer left satisfied? {text}",
        "quick vibe check on a comment: {text}", "Here is a paragraph: \"{text}\" Is the author happy with it?",
        "Read: '{text}' Favorable or unfavorable?", "Someone posted: {text}\nAre they praising it or complaining?",
        "{text} <- would this reviewer recommend it?", "Judge the attitude of the following remark: {text}",
        "Given this feedback: {text}\nIs the customer content?", "Critic's take: \u00ab{text}\u00bb. Approve or disapprove?",
    ),
    "summarization": (
        "TL;DR of the following exchange:\n{text}", "{text}\n\nBoil that down to one line.",
        "Transcript follows. Provide a synopsis of it.\n{text}", "Could you recap the back-and-forth below?\n{text}",
        "{text}\n\n^ gist?", "Minutes, please, for this call:\n{text}", "Here is an exchange:\n{text}\nWhat's the upshot?",
        "Condense what these people said into a sentence.\n\n{text}", "Read this thread and recap it for me: {text}",
        "Give me the cliff notes of this talk.\n{text}", "{text}\n\nWrap this up in a nutshell.",
        "Given this transcript:\n{text}\nWrite the one-sentence version.",
    ),
}
# jobs no adapter does, put to the same inputs
OTHER_FRAMES: tuple[str, ...] = (
    'Here is a paragraph: "{text}" Translate it into Spanish.', "Read: '{text}' Now rewrite it like Shakespeare.",
    "Given this background: {text}\n\nWrite a limerick inspired by it.", "{text}\n\nHow many sentences is that?",
    "Put this into formal legal language: {text}", "Proofread the following, please: {text}",
    "{text}\n\nRender that in Italian.", "Turn the following into a tweet with hashtags: {text}",
    "Invent a sequel to this: {text}", "Which words in this are longer than eight letters? {text}",
)
PLAIN_OTHER: tuple[str, ...] = (
    "Recommend a podcast about ancient Rome.", "Is it okay to water a cactus every week?",
    "Name three famous jazz pianists.", "What's a good name for a golden retriever puppy?",
    "Draft a tweet announcing our bake sale on Saturday.", "Which is heavier, a kilo of feathers or a kilo of steel?",
    "Outline an essay on climate policy.", "Suggest a board game for four players.",
    "How do vaccines train the immune system?", "Tell me a joke about penguins.",
    "What year did the Berlin Wall fall?", "Give me five synonyms for happy.", "How far is the Moon from Earth?",
    "Design a workout for someone with bad knees.", "Why do cats purr?", "List the planets in order from the sun.",
    "What rhymes with orange?", "Brainstorm slogans for a lemonade stand.", "Explain recursion to a child.",
    "How do I get red wine out of a carpet?", "yo whats up", "can you help me pick a laptop",
    "Summarise the history of the Roman Empire.", "Who won the 2018 World Cup?",
)
NAMES: tuple[str, ...] = ("Alice", "Bob", "Carol", "Dave", "ALICE", "BOB", "Caller", "Support", "Me", "Her",
                          "Nurse", "Patient", "Boss", "Intern", "Ken", "Lina", "Pat", "Ravi")
SEPS: tuple[str, ...] = (": ", " says: ", " \u2014 ")
QUOTES: tuple[tuple[str, str], ...] = (("\u2018", "\u2019"), ("'''", "'''"), ("[", "]"))


def qa_prompts(spec, rows: list[dict], rng: random.Random) -> list[str]:
    """Questions on the answering sentence or two (the issue's misses) or on the whole passage."""
    out = []
    for i, row in enumerate(rows):
        answer = spec.references(row)[0] if row.get("answers") else None
        text = str(row["context"])
        text = tv.excerpt(text, rng, must_contain=answer) if i % 2 == 0 else text
        q = str(row["question"]).strip()
        out.append(FRAMES["qa"][i % len(FRAMES["qa"])].format(text=text, q=q, q_lc=q[:1].lower() + q[1:]))
    return out


def _dress(text: str, rng: random.Random) -> str:
    if "#Person" in text:
        text = tv.rename_speakers(text, list(NAMES), rng, rng.choice(SEPS))
    return text


def text_prompts(frames: tuple[str, ...], texts: list[str], rng: random.Random) -> list[str]:
    """Text i in frame i mod k; now and then a slip of the keyboard in the framing words."""
    out = []
    for i, text in enumerate(texts):
        prompt = frames[i % len(frames)].format(text=_dress(text, rng))
        out.append(tv.typos(prompt, rng, rate=0.05) if i % 5 == 4 and "#Person" not in text else prompt)
    return out


def task_prompts(spec, rows: list[dict], seed: int = 0) -> list[str]:
    """The task's rows in this generator's frames (QA by its question; the others by their one input)."""
    rng = random.Random(f"heldout:{seed}:{spec.name}")
    if spec.name == "qa":
        return qa_prompts(spec, rows, rng)
    if spec.name in FRAMES:
        return text_prompts(FRAMES[spec.name], [str(r[spec.input_columns[0]]) for r in rows], rng)
    return []


def none_prompts(texts: list[str], seed: int = 0) -> list[str]:
    """Out-of-scope prompts: the plain requests, then `texts` (inputs of every task) put to other jobs."""
    rng = random.Random(f"heldout:{seed}:none")
    return list(PLAIN_OTHER) + text_prompts(OTHER_FRAMES, [tv.excerpt(t, rng) if "#Person" not in t else t
                                                           for t in texts], rng)
