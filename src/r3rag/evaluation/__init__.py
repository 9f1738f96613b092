"""Evaluation: R3-RAG and the paper's baselines over one model and retriever, scored and reported.

``prompts`` holds the baselines' own prompts and parsers; ``baselines`` the methods (questions in,
trajectories out); ``scoring`` the metrics of each prediction at every step budget and their averages;
``runner`` the resumable methods x datasets x top-k loop; ``manifest`` what defines a run's setting;
``report`` the markdown table, csv, json and plots.
"""
