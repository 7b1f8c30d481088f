"""The command-line programs, one module each: `train` (scops-train; also `python -m
scops_fast.train`, which torchrun uses), `eval` (scops-eval), `predict` (scops-predict),
`saliency` (scops-saliency) and `export` (scops-export). Each parses its arguments, checks them
before anything is written, and calls the library (`scops_fast.train`, `scops_fast.eval`,
`scops_fast.data`), which never imports this package: the commands join packages that must not
import each other, as scops-eval joins the trainer's model loading and the evaluation."""
