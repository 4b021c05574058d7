"""Example prompts for the demo: one or two per built-in task, phrased the way people ask, and requests no
adapter serves (the router should send those to the plain base). Written for the demo, not taken from the
datasets."""

from __future__ import annotations

REVIEW = ("I went in expecting another tired sequel, but the writing is sharp, the two leads have real "
          "chemistry and the final twenty minutes had the whole theater holding its breath.")

PASSAGE = ("The Amazon rainforest covers about 5.5 million square kilometres, most of it in Brazil. It is home to "
           "roughly 390 billion individual trees divided into some 16,000 species. Scientists estimate that the "
           "forest produces about 6 percent of the world's oxygen, but it also consumes most of it through the "
           "respiration of its plants and microbes.")

DIALOGUE = ("#Person1#: Hi, I'd like to return this jacket. I bought it last week but it's too small.\n"
            "#Person2#: Do you have the receipt?\n"
            "#Person1#: Yes, here it is.\n"
            "#Person2#: Would you like a larger size instead, or a refund?\n"
            "#Person1#: A larger size, if you have one in blue.\n"
            "#Person2#: We do. Here you are, a large in blue. No charge for the exchange.")

# (label shown on the button, prompt, route the router should pick)
EXAMPLES: list[tuple[str, str, str]] = [
    ("Movie review", f"Is this movie review positive or negative?\n\n{REVIEW}", "sentiment"),
    ("Unhappy customer", "Review: The battery died after two days and support never answered my emails.\n"
                         "Does this review express a positive or a negative opinion?", "sentiment"),
    ("Passage + question", f"{PASSAGE}\n\nBased on the text above, answer briefly: how many tree species "
                           "grow in the Amazon rainforest?", "qa"),
    ("Dialogue to summarize", f"Summarize this dialogue in one or two sentences.\n\n{DIALOGUE}",
     "summarization"),
    ("Out of scope: a poem", "Write a short poem about the sea at night.", "none"),
    ("Out of scope: arithmetic", "What is 17 + 25?", "none"),
]
