"""Command-line programs that join packages which must not import each other: `eval`
(`scops-eval`) scores a checkpoint, so it needs the trainer's model loading
(`scops_fast.train`) and the evaluation (`scops_fast.eval`), while the trainer itself
evaluates through `scops_fast.eval`. Nothing in the library imports this package."""
