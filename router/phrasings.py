"""The training generator: prompts that vary what real users vary, so the router learns the request, not a
template. Framing words before or after the input, or the request in the middle; quoted or bare inputs from one
sentence up; speaker names of any form instead of `#Person1#`; casual and formal register; typos.

The evaluation prompts come from a second, separately written generator (`router.heldout`) with its own
words and shapes; this module never imports it (a test checks), so nothing of the evaluation leaks into
training. A task without hand-written requests here (a task file's) gets its templates' own instructions
in all the same framings.
"""

from __future__ import annotations

import random
import string

from router import textvary as tv

# request sentences per built-in task (formal and casual), without the input
REQUESTS: dict[str, tuple[str, ...]] = {
    "sentiment": (
        "Is this positive or negative?", "Classify the sentiment.", "What is the sentiment of this text?",
        "Tell me whether the opinion is positive or negative.", "Positive or negative?",
        "Please determine the sentiment expressed.", "Does the writer like it or not?", "good or bad review?",
        "What's the tone here, positive or negative?", "Label the sentiment as positive or negative.",
        "Kindly indicate whether this review is favourable or unfavourable.", "is this a happy or an angry review",
        "How does the reviewer feel about it?", "Sentiment?", "Would you call this review positive?",
        "Did the person enjoy it?", "Identify the emotional polarity of the statement.",
        "Does the reviewer love it or hate it?", "Happy or disappointed?", "Would you call the tone warm or harsh?",
        "Did the writer have a good experience?", "positive, negative?", "Is this a compliment or a criticism?",
        "Detect the polarity of this review.", "Score the sentiment: positive or negative.", "liked it or not??",
        "Are they thrilled or fed up?", "Does this sound like a fan or a hater?", "Emotional tone?",
        "I need to know if this opinion is glowing or critical.", "Was the experience good or bad, in one word?",
    ),
    "summarization": (
        "Summarize the conversation.", "Write a short summary of this dialogue.", "Sum it up in one sentence.",
        "What happened in this conversation?", "Please provide a brief summary of the exchange.",
        "summary pls", "Give me a one-line summary of the chat.", "What are they talking about, in brief?",
        "Briefly describe what the speakers discuss.", "Can you summarize what was said?",
        "I would appreciate a concise summary of the discussion.", "what's this chat about? keep it short",
        "Write a third-person summary.", "Shorten this conversation to its main point.",
        "Explain in a sentence what happened between them.", "What are the main points of this discussion?",
        "Give me the key takeaways from the conversation.", "Write an abstract of this chat.", "main idea?",
        "Short overview of what was discussed, please.", "What did they agree on? Keep it brief.",
        "What did each side want, and how did it end? One sentence.", "Give the essence of this conversation.",
        "Digest this discussion into a single line.", "Explain the conversation to a friend who missed it.",
        "in short, what's going on in this chat?", "Describe this chat in twenty words or fewer.",
        "pls sum up", "What's the main takeaway?", "Report the discussion in a few words.",
    ),
}
QA_ASKS: tuple[str, ...] = (
    "{ask}", "Question: {ask}", "Q: {ask}", "My question is: {ask}", "Answer this: {ask}", "{ask} (answer from the text)",
    "Using the passage, {ask_lc}", "According to the text, {ask_lc}", "Can you tell me {ask_lc}",
    "Please answer the following question based on the passage: {ask}", "so {ask_lc}", "question - {ask}",
    "Based on that, {ask_lc}", "I want to know: {ask}", "Answer in a few words: {ask}",
    "Answer from the context above: {ask}", "{ask} Use the info provided.", "Look it up in the text: {ask}",
    "The text should tell you {ask_lc}", "Reading comprehension: {ask}", "Q. {ask}", "quick q about this - {ask_lc}",
    "After reading it, {ask_lc}", "{ask} The answer is in there somewhere.", "Tell me, from the information: {ask}",
)
INTROS: tuple[str, ...] = (
    "", "", "Text:", "Passage:", "Here's the text:", "Input:", "Check this out:", "Below is the text.",
    "The text reads as follows:", "So I read this:", "From an article:", "Source:", "Context:", "Review:",
    "Dialogue:", "Conversation:", "Chat log:", "This is what I have:", "Look at this:", "I found this online.",
    "Article:", "Story:", "Here it is:", "Copied from a website:", "Email:", "Message:", "My text:", "Original:",
    "The following:", "Info:", "Quote:", "Extract:", "See below.", "Pasted below:", "Have a look:", "Chat:",
)
OUTROS: tuple[str, ...] = ("Thanks!", "thx", "Thank you in advance.", "Be brief.", "Keep it short please.",
                           "Appreciate it!", "One line is enough.", "No explanation needed.")
LEADS: tuple[str, ...] = ("Hi!", "Hello,", "hey", "Quick one.", "I need some help.", "Good morning.",
                          "Dear assistant,", "ok so", "Task:", "Instruction:", "Request:", "Can you help?",
                          "Hi there, one thing.", "Please:")
QUOTES: tuple[tuple[str, str], ...] = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("```\n", "\n```"),
                                       ("<<", ">>"), ("(", ")"), ('"""', '"""'), ("`", "`"), ("{", "}"),
                                       ("***\n", "\n***"), ("<text>", "</text>"), ("==\n", "\n=="))
NAMES: tuple[str, ...] = ("Maria", "John", "A", "B", "Mr. Smith", "Dr. Lee", "Customer", "Agent", "Tom",
                          "Anna", "USER1", "user2", "Speaker 1", "Speaker 2", "Mom", "Dad", "Jake", "Priya",
                          "Wei", "Carlos", "Ms. Green", "Receptionist", "Guest", "Teacher", "Student", "Sam")
SPEAKER_SEPS: tuple[str, ...] = (": ", ": ", " - ", " > ", ":: ", "] ", " wrote: ", " | ", " >> ", ":\t")
# requests no adapter serves, put to the same kinds of input: the text alone never decides the route
OTHER_JOBS: tuple[str, ...] = (
    "Translate this into French.", "Translate the text to German.", "Fix the grammar and spelling.",
    "Rewrite this to sound more polite.", "Count the words in it.", "Continue the text with two more sentences.",
    "Turn this into a poem.", "Write a reply to it.", "What language is this written in?", "Make it all caps.",
    "Paraphrase this, please.", "Add emojis to this text.", "Write a catchy headline for a blog post about cats.",
    "Make a list of the verbs used.", "Convert this to the past tense.", "Is there a spelling mistake here?",
    "Write a story that starts like this.", "Rewrite it for a five-year-old.", "Find all the nouns.",
    "Make this sound more exciting.", "Write a social media post based on this.", "Translate it to Japanese.",
    "Correct any errors in this text.", "Turn it into a song chorus.", "Rewrite this in British English.",
    "Write the next line of this.", "What is the longest word in this?", "Reply to this as the store manager.",
    "Extract all dates and numbers mentioned.", "Turn this into a quiz question.", "Make it rhyme.",
    "Rewrite it from the other person's point of view.", "Write a funny ending for it.", "Translate this into Korean.",
    "Continue the dialogue for two more lines.", "Mark all adjectives in bold.", "Check it for offensive words.",
    "Turn this into a job advert.", "Spell-check this.", "Rewrite with simpler words.", "Translate to Russian pls",
    "Count the letter e.", "Encode it in pig latin.", "Write a rebuttal to this.",
    "Turn this into a screenplay scene.", "Convert it into a numbered list of facts.", "Make it sound angrier.",
    "Write two questions a teacher might ask about it.", "Replace the names with X.", "Write it backwards.",
)


def template_requests(spec) -> tuple[str, ...]:
    """A template's instruction without its input: slots removed, lone labels ("Review:") dropped."""
    out = []
    for t in spec.templates:
        slots = [f for _, f, _, _ in string.Formatter().parse(t) if f]
        text = t.format(**{s: "" for s in slots})
        lines = [x.strip() for x in text.splitlines()]
        kept = [x for x in lines if x and not (x.endswith(":") and len(x) < 25)]
        if kept:
            out.append(" ".join(kept))
    return tuple(dict.fromkeys(out))


def pick(rng: random.Random, items, part: str):
    """A random item of the `part` pool: every 4th item is kept for the calibration split (`calibrate`), so the
    temperature is fit on wording the router was not fit on; a pool too short to split is shared."""
    chosen = [x for i, x in enumerate(items) if (i % 4 == 3) == (part == "calibrate")]
    return rng.choice(chosen or list(items))


def style(request: str, rng: random.Random) -> str:
    """Register and slips: a casual or a plain request, now and then with typos."""
    if rng.random() < 0.3:
        request = tv.casual(request)
    if rng.random() < 0.3:
        request = tv.typos(request, rng, rate=0.2)
    return request


def dress(text: str, rng: random.Random, part: str = "fit") -> str:
    """The input as people paste it: a chat with real speaker names, sometimes cut short, maybe in quotes."""
    if "#Person" in text and rng.random() < 0.7:  # DialogSum's markers stay in some: people paste those too
        text = tv.first_turns(text, rng) if rng.random() < 0.3 else text
        cast = [x for i, x in enumerate(NAMES) if (i % 4 == 3) == (part == "calibrate")]
        text = tv.rename_speakers(text, cast, rng, pick(rng, SPEAKER_SEPS, part))
    if rng.random() < 0.35:
        text = tv.quote(text, pick(rng, QUOTES, part))
    return text


def frame(request: str, text: str, rng: random.Random, part: str = "fit") -> str:
    """Put the request before the input, after it, or in the middle (between a lead-in and the input, or
    between the input and a closing remark)."""
    intro = pick(rng, INTROS, part)
    body = f"{intro}\n{text}" if intro and rng.random() < 0.5 else f"{intro} {text}".strip()
    sep = rng.choice(("\n\n", "\n", " "))
    layout = rng.randrange(4)
    if layout == 0:
        return f"{request}{sep}{body}"
    if layout == 1:
        return f"{body}{sep}{request}"
    if layout == 2:
        return f"{pick(rng, LEADS, part)} {request}{sep}{body}"
    return f"{body}{sep}{request} {pick(rng, OUTROS, part)}"


def _piece(text: str, rng: random.Random) -> str:
    """Inputs of any length from one sentence up (chats keep their lines; `dress` shortens those)."""
    if "\n" in text or rng.random() < 0.7:
        return text
    return tv.excerpt(text, rng, most=2)


def single_prompts(spec, rows: list[dict], rng: random.Random, per_row: int, part: str) -> list[str]:
    """Tasks with one input: each row in `per_row` random framings of the task's requests."""
    column = spec.input_columns[0]
    requests = REQUESTS.get(spec.name) or template_requests(spec)
    return [frame(style(pick(rng, requests, part), rng), dress(_piece(str(row[column]), rng), rng, part), rng, part)
            for row in rows for _ in range(per_row)]


def ask_prompts(spec, rows: list[dict], rng: random.Random, per_row: int, part: str) -> list[str]:
    """A passage and a question about it (QA, or a task file's two-input task): the passage whole or just
    the sentence or two that answer, quoted or not, the question before or after it."""
    text_col = spec.truncate_column
    ask_col = next(c for c in spec.input_columns if c != text_col)
    out = []
    for row in rows:
        answer = spec.references(row)[0] if spec.name == "qa" else None
        for _ in range(per_row):
            passage = str(row[text_col])
            if rng.random() < 0.5:
                passage = tv.excerpt(passage, rng, must_contain=answer)
            ask = str(row[ask_col]).strip()
            asked = pick(rng, QA_ASKS, part).format(ask=ask, ask_lc=ask[:1].lower() + ask[1:])
            out.append(frame(style(asked, rng), dress(passage, rng, part), rng, part))
    return out


def other_job_prompts(texts: list[str], n: int, seed: int, part: str = "fit") -> list[str]:
    """Route `none`: task-looking inputs (reviews, passages, chats) with a request no adapter serves."""
    rng = random.Random(f"{seed}:other:{part}")
    return [frame(style(pick(rng, OTHER_JOBS, part), rng), dress(_piece(rng.choice(texts), rng), rng, part), rng, part)
            for _ in range(n)] if texts else []


def rename_some(prompts: list[str], seed: int, share: float = 0.5) -> list[str]:
    """Give `share` of the chats among `prompts` speaker names: `#Person1#` must not mark a task by itself."""
    rng = random.Random(f"{seed}:names")
    return [tv.rename_speakers(p, list(NAMES), rng, rng.choice(SPEAKER_SEPS))
            if "#Person" in p and rng.random() < share else p for p in prompts]


def varied_prompts(spec, rows: list[dict], seed: int, per_row: int = 4, part: str = "fit") -> list[str]:
    """The task's rows in `per_row` generated framings each; `part="calibrate"` draws from the calibration pools."""
    rng = random.Random(f"{seed}:{spec.name}:{part}")
    if len(spec.input_columns) == 1:
        return single_prompts(spec, rows, rng, per_row, part)
    if len(spec.input_columns) == 2 and spec.truncate_column in spec.input_columns:
        return ask_prompts(spec, rows, rng, per_row, part)
    return []  # three or more inputs: the templates only
