"""Reinforcement learning: PPO with the hybrid reward, from the cold-start model (R3-RAG-CS) to R3-RAG.

``samples`` turns scored trajectories into token samples (the credit scheme), ``losses`` holds the PPO
formulas, ``models`` the actor, critic and reference, ``rollout`` and ``dev_eval`` run the agent for
training and for the curve, ``tracking`` and ``checkpoint`` keep the run's record, and ``ppo`` is the loop.
"""
