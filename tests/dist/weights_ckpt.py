"""torchrun worker (4 ranks, TP2 x PP2): a from-hf checkpoint (written at TP1/PP1) loads resharded
and exports bit-exact HF tensors; then a training-style checkpoint (model + distributed
optimizer + run config) is written at this layout for the to-hf test to convert.

Usage: weights_ckpt.py HF_DIR FROM_HF_CKPT TRAIN_CKPT_ROOT
"""
import sys

import torch
import torch.distributed as dist

from igrpo_megatron.checkpoint import load_checkpoint, save_checkpoint
from igrpo_megatron.config import Config, ModelConfig, ParallelConfig
from igrpo_megatron.models.parallel import destroy_parallel, initialize_parallel
from igrpo_megatron.models.provider import build_model, load_hf_config
from igrpo_megatron.weights import HFSafetensors, export_hf_weights


def main(hf_dir, from_hf_ckpt, train_root):
    par = ParallelConfig(tp=2, pp=2)
    initialize_parallel(par, seed=1)
    hf_cfg = load_hf_config(hf_dir)
    model_cfg = ModelConfig(hf_path=hf_dir, dtype="fp32", transformer_impl="local")
    model = build_model(hf_cfg, model_cfg, par, wrap_ddp=True)
    load_checkpoint(from_hf_ckpt, [model], load_optimizer=False, load_rng=False)
    exported = {n: t.clone() for bucket in export_hf_weights([model], hf_cfg, bucket_bytes=1 << 20) for n, t in bucket}
    if dist.get_rank() == 0:
        with HFSafetensors(hf_dir) as src:
            same = set(exported) == src.names() and all(torch.equal(src.get(n), t) for n, t in exported.items())
        print(f"CHECK resharded_export_exact {int(same)}", flush=True)

    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-4, bf16=False, use_distributed_optimizer=True, clip_grad=0.0), [model])
    save_checkpoint(train_root, 5, [model], optimizer, config=Config(model=model_cfg, parallel=par))
    destroy_parallel()


if __name__ == "__main__":
    main(*sys.argv[1:4])
    destroy_parallel(destroy_process_group=True)
