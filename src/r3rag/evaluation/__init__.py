"""Evaluation: R3-RAG and the paper's baselines over one model and retriever, scored and reported.

``methods`` holds one module per method (questions in, trajectories out) and the registry that finds them;
``config`` the eval config, built from that registry; ``prompts`` the baselines' own prompts and parsers;
``scoring`` the metrics of each prediction at every step budget and their averages; ``runner`` the resumable
methods x datasets x top-k loop; ``manifest`` what defines a run's setting; ``report`` the markdown table,
csv, json and plots.
"""
