"""torchrun worker: build the tiny model under several layouts in one launch (see test_models_provider.py)."""
import sys

import torch
import torch.distributed as dist

from igrpo_megatron.config import ModelConfig, ParallelConfig
from igrpo_megatron.models.parallel import destroy_parallel, initialize_parallel
from igrpo_megatron.models.provider import build_model, load_hf_config, unwrap


def check(name, value):
    if dist.get_rank() == 0:
        print(f"CHECK {name} {value}", flush=True)


def main(hf_path):
    hf = load_hf_config(hf_path)
    for tp, pp in [(2, 1), (1, 2)]:
        par = ParallelConfig(tp=tp, pp=pp)
        info = initialize_parallel(par, seed=3)
        model = build_model(hf, ModelConfig(dtype="fp32"), par, wrap_ddp=True)
        ids = torch.randint(0, hf.vocab_size, (2, 8))
        pos = torch.arange(8).expand(2, -1)
        if info.is_first_stage:
            out = model(input_ids=ids, position_ids=pos, attention_mask=None)
            if info.is_last_stage:  # TP layout: [b, s, padded_vocab / tp] local logits
                out.float().square().mean().backward()
                check(f"tp{tp}pp{pp}_local_vocab", out.shape[-1])
                grads = sum(p.main_grad.abs().sum().item() > 0 for p in model.parameters())
                check(f"tp{tp}pp{pp}_params_with_grad_frac", grads / len(list(model.parameters())))
        check(f"tp{tp}pp{pp}_padded_vocab", unwrap(model).padded_vocab_size)
        check(f"tp{tp}pp{pp}_layers_per_stage", len(unwrap(model).decoder.layers))
        destroy_parallel()
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
    destroy_parallel(destroy_process_group=True)
