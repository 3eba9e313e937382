#!/usr/bin/env python3
"""The Python side of bench/run.sh: makes the benchmark checkpoints and runs the peers.

    peers.py make-llama DIR --hidden H --layers L --intermediate I --vocab V --heads N --kv K [--shard SIZE]
    peers.py safetensors-copy SRC DST      # load every shard with safetensors and save it again
    peers.py forward DIR --tokens N        # transformers eager float32 forward on CPU, one sequence
"""
import argparse
import json
import os
import shutil
import sys
import time


def make_llama(a):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                         num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv,
                         max_position_embeddings=4096, tie_word_embeddings=False)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).float()
    shutil.rmtree(a.dir, ignore_errors=True)
    model.save_pretrained(a.dir, max_shard_size=a.shard)
    params = sum(p.numel() for p in model.parameters())
    print(f"{a.dir}: {params / 1e6:.0f}M parameters, {sorted(os.listdir(a.dir))}")


def safetensors_copy(a):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    shutil.rmtree(a.dst, ignore_errors=True)
    os.makedirs(a.dst)
    for f in sorted(os.listdir(a.src)):
        src = os.path.join(a.src, f)
        if f.endswith(".safetensors"):
            with safe_open(src, "pt") as st:
                metadata = st.metadata()
            save_file(load_file(src), os.path.join(a.dst, f), metadata=metadata)
        else:
            shutil.copy(src, os.path.join(a.dst, f))


def forward(a):
    started = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(a.dir, dtype=torch.float32, attn_implementation="eager").eval()
    tokens = torch.tensor([[(i * 7919) % model.config.vocab_size for i in range(a.tokens)]])
    loaded = time.perf_counter()
    logits = model(tokens).logits
    done = time.perf_counter()
    print(json.dumps({"import_and_load_s": loaded - started, "forward_s": done - loaded, "shape": list(logits.shape)}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-llama")
    m.add_argument("dir")
    for k in ["hidden", "layers", "intermediate", "vocab", "heads", "kv"]:
        m.add_argument("--" + k, type=int, required=True)
    m.add_argument("--shard", default="5GB")
    c = sub.add_parser("safetensors-copy")
    c.add_argument("src")
    c.add_argument("dst")
    f = sub.add_parser("forward")
    f.add_argument("dir")
    f.add_argument("--tokens", type=int, default=256)
    a = ap.parse_args()
    {"make-llama": make_llama, "safetensors-copy": safetensors_copy, "forward": forward}[a.cmd](a)
