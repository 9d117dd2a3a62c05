"""Text to tokens: corpora, cleaning, tokenizers, preparation, templates, examples, batches."""
