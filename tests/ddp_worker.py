"""Run under torchrun by test_distributed.py: train a few steps with DDP, then dump this rank's weights."""
from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from unitok import recipes
from unitok.config import load_config


def main() -> None:
    config, out, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    run = load_config(config, overrides)
    trainer, _ = recipes.train(run, out, resume=False)
    weights = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(weights, os.path.join(out, f"rank{dist.get_rank()}.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
