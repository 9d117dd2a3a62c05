"""Training: the loop (`loop`, with `schedule`, `optim`, `resume`, `signals`, `tracking`), the
run set-up every run shares (`session`, `samples`), pre-training (`pretrain`), fine-tuning
(`finetune`, with `base` and `feed`), and plots of runs (`plots`)."""
