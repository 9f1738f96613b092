"""r3rag on veRL (``pip install r3rag[verl]``): the agent loop registered as ``r3rag``, the step outputs that
carry each step's own reward, and the generator that calls veRL's rollout servers.

Only :mod:`~r3rag.integrations.verl.agent_loop` and :mod:`~r3rag.integrations.verl.outputs` import veRL; the
rest of r3rag never imports this package, so an install without the extra is unaffected.
"""
