"""How samples are produced and scored: the vLLM rollout actor and the verifiers."""
