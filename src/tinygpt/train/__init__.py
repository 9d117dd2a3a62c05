"""Training: the loop, its set-up, optimisers, fine-tuning, LoRA, plots."""
