"""The `pretrain` stage: Llama 2 pretraining on Ray Train with FSDP2 (Touvron et al., 2023, §2.2).

One module per component, as in torchtitan: `data` (token windows), `schedule` (LR),
`optimizer` (AdamW groups), `parallel` (FSDP2 / activation checkpointing / compile, applied
from outside the model), `checkpoint` (torch.distributed.checkpoint + trainer state),
`throughput` (tokens/s, MFU), `train_loop` (the per-worker loop), `export` (Hugging Face
layout) and `stage` (config and the Ray Train glue).
"""
