"""Evaluation: perplexity / bits per byte on text, accuracy with pass@k and maj@k on built-in tasks and
question/answer files, on the inference engine (`nanoseek eval`).

    from nanoseek.evaluate import evaluate, markdown_table, pass_at_k
    report = evaluate("runs/demo/model", ["arithmetic", "notes.txt", "gsm8k.jsonl"], n=4, k=[1, 4])
    print(markdown_table(report))
"""
from .accuracy import AnswerMatcher, canonical
from .metrics import bits_per_byte, mean_pass_at_k, pass_at_k, perplexity
from .perplexity import score_documents
from .runner import evaluate, markdown_table, parse_task
from .scoring import continuation_logprobs, rolling_requests

__all__ = ["evaluate", "markdown_table", "parse_task", "pass_at_k", "mean_pass_at_k", "perplexity",
           "bits_per_byte", "score_documents", "continuation_logprobs", "rolling_requests", "AnswerMatcher",
           "canonical"]
