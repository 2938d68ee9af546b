"""The LLM preference-shift study: the emotion probe, Bradley-Terry labels on a causal
LM's completions, DPO/WDPO/KLDPO training and the reward sweep over alpha (torch)."""
