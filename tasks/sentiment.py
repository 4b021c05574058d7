"""Binary sentiment of a sentence (SST-2). Short inputs, a one-word answer."""

from tasks import register
from tasks.spec import LoraSettings, TaskSpec, TrainSettings

SPEC = register(TaskSpec(
    name="sentiment",
    description="Is the sentiment of a sentence or review positive or negative?",
    dataset="stanfordnlp/sst2",
    local_dir="sst2",
    input_columns=("sentence",),
    target_column="label",
    labels=("negative", "positive"),
    metric="accuracy",
    templates=(
        "Classify the sentiment of this movie review as positive or negative.\n\nReview: {sentence}",
        "Is the following sentence positive or negative?\n{sentence}",
        "What is the sentiment of this text? Answer positive or negative.\n\n{sentence}",
        "Review: {sentence}\nDoes this review express a positive or a negative opinion?",
        'Decide whether the writer feels positive or negative: "{sentence}"',
        "Sentiment analysis. Text: {sentence}\nLabel (positive/negative):",
    ),
    max_new_tokens=3,
    # the top 20 of 30 layers: 0.875 accuracy like all 30 (200 validation rows), backward stops 10 layers
    # early (~20% faster training) and the adapter is a third smaller
    lora=LoraSettings(r=16, alpha=32, layers=20),
    # ~60-token examples: rows of 128 tokens (two examples) spend less on masked-out attention than rows of 512
    # (a GPU's attention; on a CPU a batch is one row with its shared prefix once, zoo.training.packing)
    train=TrainSettings(learning_rate=1e-3, batch_size=8, max_examples=800, row_tokens=128),
    # out of domain: product, movie and restaurant review sentences (UCI: Amazon, IMDb, Yelp), same columns
    ood={"dataset": "uci_sentiment", "split": "test"},
    license="unknown (SST, Socher et al. 2013)",
))
