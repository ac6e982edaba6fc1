"""The `pretrain` stage: Llama 2 pretraining on Ray Train with FSDP2 (Touvron et al., 2023, §2.2).

`stage` holds the config and the glue; the loop, optimizer, schedule, parallelism and
checkpoints it runs on are the shared ones in `operators/training/`, and the token windows it
trains on come from `windows`.
"""
