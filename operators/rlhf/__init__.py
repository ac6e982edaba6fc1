"""RLHF (Llama 2 §3.2.3): rejection sampling and PPO rounds on the two reward models, sharing one
rollout engine (generation with log-probs, scoring by both reward models)."""
