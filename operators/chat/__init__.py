"""The chat half of the paper (§3): chat data, supervised fine-tuning, the reward models and the
stages built on them. Each stage module reads its inputs by role; shared pieces (dialog checks,
preference levels, packing) live in their own modules."""
