"""The rollout engine, below both the chat and the RLHF operators: sample responses from a policy
and score them (reward models, a frozen reference policy) for every stage that samples.

    engine.py     the interface (`RolloutEngine`) and its types (`Sampling`, `Rollout`)
    config.py     the rollout actors' settings every sampling stage carries (`RolloutConfig`)
    factory.py    `rollout_engine(...)`: the one place an engine is built, from that config
    actors.py     our engine: a pool of Ray actors running `model/generate.py`
    scoring.py    reward scores and reference log-probs of whole batches
    sequences.py  right-padded batches of token-id sequences (also what reward training collates)
"""
