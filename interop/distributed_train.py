"""One rank of a distributed training run of a converted checkpoint, on CPU with gloo, as a user
would start it: `torchrun --nproc_per_node 2 interop/distributed_train.py DIR --mode ddp|fsdp`.

Every rank trains the remote-code model on its own fixed synthetic batch for --steps optimizer
steps, checks after each that every gate has a gradient (gathered, under FSDP2) and that the
ranks hold the same parameters, and rank 0 writes what it saw to --out (JSON). With --save, the
trained model is saved by every rank calling save_pretrained (FSDP2: gathered to rank 0).
"""
import argparse
import json
import os

import torch
import torch.distributed as dist
import transformers


def full(t):
    """A parameter or gradient as one tensor, gathered when FSDP2 shards it (a DTensor)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--mode", choices=["ddp", "fsdp"], required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--checkpointing", action="store_true", help="gradient_checkpointing_enable()")
    ap.add_argument("--out", required=True)
    ap.add_argument("--save")
    a = ap.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    model = transformers.AutoModelForCausalLM.from_pretrained(a.checkpoint, trust_remote_code=True, dtype=torch.float32)
    model.train()
    if a.checkpointing:
        model.gradient_checkpointing_enable()
    gates = [n for n, _ in model.named_parameters() if n.endswith(("expert_gate.weight", "depth_predictor.weight"))]
    base = model
    if a.mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard
        for layer in base.model.layers:
            fully_shard(layer)
        fully_shard(base)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    # A fixed batch per rank (the same in every run, so DDP and FSDP see the same data).
    g = torch.Generator().manual_seed(100 + rank)
    vocab = base.config.vocab_size
    tokens = torch.randint(0, vocab, (2, 16), generator=g)
    # The same Gumbel noise on both runs' ranks.
    torch.manual_seed(1000 + rank)

    losses, identical, gated, aux = [], True, True, []
    for step in range(a.steps):
        optimizer.zero_grad()
        # transformers' own loss, with the load-balance term when the config turns it on.
        out = model(input_ids=tokens, labels=tokens)
        loss = out.loss
        aux.append(float(out.aux_loss) if getattr(out, "aux_loss", None) is not None else None)
        loss.backward()
        named = dict(base.named_parameters())
        for n in gates:
            grad = named[n].grad
            if grad is None or not bool(full(grad).abs().max() > 0):
                gated = False
        optimizer.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
        # The ranks' parameters agree after every step (a checksum of all of them, gathered).
        checksum = torch.stack([full(p.detach()).double().sum() for p in base.parameters()]).sum().reshape(1)
        sums = [torch.zeros(1, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(sums, checksum)
        identical = identical and all(float(s) == float(sums[0]) for s in sums)
    steps = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    dist.all_gather(steps, torch.tensor([base.versatile_depth_step]))
    if a.save:
        base.save_pretrained(a.save)
    if rank == 0:
        json.dump({"losses": losses, "aux": aux, "identical": identical, "gated": gated, "gates": len(gates),
                   "depth_steps": [int(s) for s in steps]}, open(a.out, "w"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
