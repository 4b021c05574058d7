"""Dialogue summarization (DialogSum): a one- or two-sentence third-person summary of a conversation."""

from tasks import register
from tasks.spec import LoraSettings, TaskSpec, TrainSettings

SPEC = register(TaskSpec(
    name="summarization",
    description="Summarize a dialogue in one or two sentences.",
    dataset="knkarthick/dialogsum",
    local_dir="dialogsum",
    input_columns=("dialogue",),
    target_column="summary",
    metric="rouge",
    templates=(
        "Summarize this dialogue in one or two sentences.\n\n{dialogue}",
        "{dialogue}\n\nWrite a short summary of the conversation above.",
        "Briefly, what happens in this conversation?\n{dialogue}",
        "Dialogue:\n{dialogue}\n\nSummary:",
        "Give a brief third-person summary of the following chat.\n\n{dialogue}",
    ),
    truncate_column="dialogue",
    max_new_tokens=48,
    lora=LoraSettings(r=16, alpha=32),
    # batch size from the learning-curve study (docs/learning-curves/): what a CPU's time budget reaches is a few
    # dozen optimizer steps, and steps, not examples, are what is short there: at 72 examples (what `make run
    # AVX2=1` reached with 8) ROUGE-L 27.0 with batches of 4 against 18.8 with 8; at 200, 28.8 against 27.5.
    # Learning rate 1e-3 (session 19, 200 validation rows): 27.0 against 24.3 with 5e-4 at 56 examples (what the
    # slow machine's budget reaches), 29.4 against 28.6 at 196 (docs/learning-curves/lr-at-budget-sizes-n200.json)
    train=TrainSettings(learning_rate=1e-3, batch_size=4, max_examples=200),
    # SciTLDR: an abstract as a list of sentences, 1-4 one-sentence TL;DRs (all of them references)
    ood={"dataset": "scitldr", "split": "test", "columns": {"dialogue": "source", "summary": "target"},
         "join": ["dialogue"]},
    license="cc-by-nc-sa-4.0",
))
