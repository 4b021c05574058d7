"""Out-of-scope prompts (route `none`): requests no adapter of the zoo serves, so the plain base answers.

Each category is a list of frames (with one `{x}` slot) and a list of fillers. A prompt is frame x filler.
Every 4th frame and every 4th filler are held out: training uses only (train frame, train filler) pairs, the
evaluation set every other pair, so no evaluation prompt was ever seen and each has an unseen frame or filler.
Random character strings (`noise`) come from different seeds for training and evaluation.
"""

from __future__ import annotations

from itertools import product

_SENTENCES = [  # payloads for text-editing and translation requests; some look like reviews on purpose
    "Where is the nearest train station?", "I would like a cup of coffee, please.",
    "The weather is lovely today.", "This movie was absolutely wonderful.",
    "My brother works at the hospital downtown.", "We are meeting at noon tomorrow.",
    "The book on the kitchen table is mine.", "I really did not enjoy the dinner last night.",
    "Could you help me carry these boxes upstairs?", "Happy birthday, my dear friend!",
    "The museum opens at nine on weekdays.", "She plays the piano beautifully.",
]

CATEGORIES: dict[str, tuple[list[str], list[str]]] = {
    "chitchat": (
        ["{x}", "hi there! {x}", "hey, {x}", "good morning :) {x}", "hello again. {x}", "ok so {x}",
         "lol {x}", "Hi! {x}"],
        ["how are you today?", "what's your name?", "tell me about yourself", "are you a robot?",
         "do you like music?", "what are you up to?", "can we be friends?", "I'm bored, talk to me",
         "what's your favorite color?", "thanks for the help earlier", "do you ever dream?",
         "what should I call you?"]),
    "arithmetic": (
        ["What is {x}?", "Calculate {x}.", "compute {x} please", "{x} = ?", "Can you work out {x} for me?",
         "Solve: {x}", "quick math: {x}", "How much is {x}?"],
        ["17 + 25", "12 * 13", "144 / 12", "3 to the power of 5", "the square root of 169", "98 - 47",
         "15% of 240", "7 factorial", "1234 + 4321", "2.5 * 4.2", "the sum of the first 10 integers",
         "81 divided by 9"]),
    "coding": (
        ["Write a Python function that can {x}.", "How do I {x} in JavaScript?", "Show me code to {x}.",
         "In Rust, how can I {x}?", "Give me a bash one-liner to {x}.", "What's the fastest way to {x} in C++?",
         "Write a SQL query to {x}.", "Explain how to {x} in Go."],
        ["reverse a string", "sort a list of numbers", "read a CSV file", "check if a number is prime",
         "merge two dictionaries", "parse a JSON document", "count word frequencies",
         "remove duplicates from a list", "download a web page", "find the largest file in a folder",
         "compute a factorial", "connect to a database"]),
    "translation": (
        ["Translate into French: {x}", "How do you say '{x}' in Spanish?", "Please translate this to German: {x}",
         "What is '{x}' in Japanese?", "Translate the following sentence into Italian.\n{x}",
         "{x}\nTranslate that into Portuguese.", "Can you put this into Chinese? {x}", "Render in Dutch: {x}"],
        _SENTENCES),
    "creative": (
        ["Write a poem about {x}.", "Tell me a short story about {x}.", "Compose a haiku on {x}.",
         "Write song lyrics about {x}.", "Draft a limerick about {x}.", "Write a bedtime story featuring {x}.",
         "Invent a myth that explains {x}.", "Write a dramatic monologue about {x}."],
        ["the ocean", "a lonely robot", "autumn leaves", "a cat who learns to fly", "the first day of school",
         "a dragon and a baker", "city lights at night", "friendship", "a lost umbrella", "the moon",
         "time travel", "a rainy Monday"]),
    "open_question": (
        ["{x}", "Quick question: {x}", "I was wondering, {x}", "Can you tell me {x}", "Hey, {x}",
         "Trivia time! {x}", "Settle a bet: {x}", "Just curious - {x}"],
        ["who founded Microsoft?", "what is the capital of Australia?", "when did World War II end?",
         "how tall is Mount Everest?", "who painted the Mona Lisa?", "why is the sky blue?",
         "how many moons does Mars have?", "what language is spoken in Brazil?",
         "who wrote Pride and Prejudice?", "what is the boiling point of water?",
         "where is the Great Barrier Reef?", "how does photosynthesis work?"]),
    "recipe": (
        ["How do I make {x}?", "Give me a recipe for {x}.", "What ingredients do I need for {x}?",
         "Easy {x} recipe please", "How long should I bake {x}?", "What's the secret to good {x}?",
         "Step by step instructions for {x}", "Can I make {x} without eggs?"],
        ["banana bread", "pancakes", "lasagna", "chicken curry", "a chocolate cake", "guacamole",
         "sourdough bread", "pad thai", "tomato soup", "lemonade", "risotto", "apple pie"]),
    "advice": (
        ["How can I {x}?", "Any tips to {x}?", "I need advice: I want to {x}.", "What's the best way to {x}?",
         "My friend asked me how to {x}. What should I say?", "Help me {x}.", "Is it hard to {x}?",
         "What should I know before I {x}?"],
        ["sleep better", "save money for a house", "learn to play guitar", "prepare for a job interview",
         "stop procrastinating", "get in shape", "make new friends in a new city", "negotiate a raise",
         "study for exams", "start a small business", "deal with stress at work", "learn a new language"]),
    "about_a_work": (  # task words with no text to work on: the base answers from its own knowledge
        ["Summarize the plot of {x}.", "What is {x} about?", "Give me a summary of {x}.",
         "Who is the main character in {x}?", "Did critics like {x}?", "Write a positive review of {x}.",
         "What are the main themes of {x}?", "Write a negative review of {x}."],
        ["Hamlet", "The Great Gatsby", "Moby Dick", "Star Wars", "The Lord of the Rings", "Inception",
         "Harry Potter", "War and Peace", "Titanic", "1984", "The Godfather", "Jurassic Park"]),
    "writing": (
        ["Write an email to {x}.", "Draft a text message to {x}.", "Help me write a letter to {x}.",
         "Compose a short note to {x}.", "Write a polite message to {x}.", "I need to write to {x}. Any ideas?",
         "Draft a formal email to {x}.", "Write a funny card for {x}."],
        ["my landlord about a broken heater", "my boss asking for a day off", "a friend who just moved away",
         "my neighbor about the noise", "a customer thanking them for their order",
         "my team announcing a new project", "my grandmother for her birthday", "a professor asking for an extension",
         "the city council about potholes", "a colleague who is retiring", "a hotel asking about a refund",
         "my teacher saying thank you"]),
    "explain": (
        ["Explain {x} like I'm five.", "What does {x} mean?", "Define {x}.", "Give me an example of {x}.",
         "Can you explain {x} in simple terms?", "What is the history of {x}?", "Why does {x} matter?",
         "Teach me about {x}."],
        ["quantum entanglement", "inflation", "machine learning", "photosynthesis", "blockchain",
         "the theory of relativity", "democracy", "a black hole", "compound interest", "DNA",
         "the stock market", "gravity"]),
    "conversion": (
        ["Convert {x}.", "What is {x} in other units?", "Please convert {x}", "How do I convert {x}?",
         "{x} - convert it for me", "Unit conversion: {x}", "Can you change {x}?", "convert {x} quickly"],
        ["5 miles to kilometers", "100 Fahrenheit to Celsius", "3 cups to milliliters", "60 mph to km/h",
         "2 pounds to grams", "10 inches to centimeters", "1 gallon to liters", "30 Celsius to Fahrenheit",
         "500 meters to feet", "8 ounces to grams", "2 hours to seconds", "1 terabyte to gigabytes"]),
    "text_editing": (
        ["Fix the grammar: {x}", "Paraphrase this sentence: {x}", "How many words are in this sentence? {x}",
         "Make this more formal: {x}", "Rewrite in the passive voice: {x}", "Turn this into a question: {x}",
         "Correct the spelling: {x}", "Make this sentence shorter: {x}"],
        _SENTENCES),
    "planning": (
        ["Plan {x} for me.", "Make a schedule for {x}.", "Help me organize {x}.", "What should I pack for {x}?",
         "Create a checklist for {x}.", "Give me ideas for {x}.", "What's a good budget for {x}?",
         "Suggest an itinerary for {x}."],
        ["a weekend in Paris", "a birthday party", "a camping trip", "my study week", "a wedding",
         "a road trip across Spain", "a team offsite", "a picnic in the park", "a move to a new apartment",
         "a week in Tokyo", "a marathon training month", "a family reunion"]),
    "fragments": (  # too little to act on: the base answers, no adapter should guess
        ["{x}", "{x}?", "{x}!", "{x}...", "um, {x}", "{x} :)", "{x}!!", "well {x}"],
        ["ok", "hmm", "thanks", "lol", "yes", "no", "test", "hello", "sure", "bye", "cool", "what"]),
}
NOISE_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?#@$%&*()[]{}<>/\\|_-+=~'\"\ufffd\x00"


def noise(n: int, seed: int) -> list[str]:
    """Random character strings (binary garbage on stdin decodes to such text): never an adapter's job."""
    import random

    rng = random.Random(seed)
    return ["".join(rng.choice(NOISE_ALPHABET) for _ in range(rng.randint(3, 40))) for _ in range(n)]


def _held_out(i: int) -> bool:
    return i % 4 == 3


def oos_prompts(split: str = "train") -> list[str]:
    """`train`: train frames x train fillers. `eval`: every other pair, disjoint from `train` by construction."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    out: list[str] = []
    for frames, fillers in CATEGORIES.values():
        for (fi, frame), (xi, filler) in product(enumerate(frames), enumerate(fillers)):
            seen = not _held_out(fi) and not _held_out(xi)
            if seen == (split == "train"):
                out.append(frame.format(x=filler))
    train_noise = noise(120, seed=0)
    seen_noise = set(train_noise)
    out += train_noise if split == "train" else [t for t in noise(30, seed=1) if t not in seen_noise]
    return list(dict.fromkeys(out))
