"""How the policy is updated: GRPO math (pure torch) and the DeepSpeed trainer actors."""
