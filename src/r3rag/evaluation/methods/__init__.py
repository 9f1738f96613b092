"""The evaluation methods, one module each, found by :mod:`~r3rag.evaluation.methods.registry`.

``base`` holds what a method is (:class:`~r3rag.evaluation.methods.base.EvalMethod`) and the batching the
baselines share; every other module defines one method: CoT, RAG with CoT, ReAct, Self-Ask, ITER-RETGEN,
IRCoT and FLARE (the paper's Table 1 baselines, with our own prompts from :mod:`r3rag.evaluation.prompts`),
Search-R1's tag protocol (for its released checkpoints) and R3-RAG itself. Adding a method is adding a
module here: the config, runner, report and CLI read the registry.
"""
