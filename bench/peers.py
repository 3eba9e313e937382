#!/usr/bin/env python3
"""The Python side of bench/run.sh: makes the benchmark checkpoints and runs the peers.

    peers.py make-llama DIR --hidden H --layers L --intermediate I --vocab V --heads N --kv K [--shard SIZE]
    peers.py safetensors-copy SRC DST      # load every shard with safetensors and save it again
    peers.py forward DIR --tokens N        # transformers eager float32 forward on CPU, one sequence
    peers.py olmo-export SRC DST           # safetensors load, OLMo's fusing (torch.cat), torch.save
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


def olmo_export(a):
    """What `convert --output-format olmo` does, the way a Python script would: every tensor in
    memory, q/k/v and up/gate concatenated, one torch.save (no fsync, as torch.save does not)."""
    import torch
    from safetensors.torch import load_file
    source = {}
    for f in sorted(os.listdir(a.src)):
        if f.endswith(".safetensors"):
            source.update(load_file(os.path.join(a.src, f)))
    config = json.load(open(os.path.join(a.src, "config.json")))
    out = {"transformer.wte.weight": source["model.embed_tokens.weight"]}
    for i in range(config["num_hidden_layers"]):
        l, b = f"model.layers.{i}.", f"transformer.blocks.{i}."
        out[b + "att_proj.weight"] = torch.cat([source[l + f"self_attn.{p}_proj.weight"] for p in "qkv"])
        out[b + "attn_out.weight"] = source[l + "self_attn.o_proj.weight"]
        out[b + "ff_proj.weight"] = torch.cat([source[l + "mlp.up_proj.weight"], source[l + "mlp.gate_proj.weight"]])
        out[b + "ff_out.weight"] = source[l + "mlp.down_proj.weight"]
        out[b + "attn_norm.weight"] = source[l + "input_layernorm.weight"]
        out[b + "ff_norm.weight"] = source[l + "post_attention_layernorm.weight"]
    out["transformer.ln_f.weight"] = source["model.norm.weight"]
    out["transformer.ff_out.weight"] = source["lm_head.weight"]
    shutil.rmtree(a.dst, ignore_errors=True)
    os.makedirs(a.dst)
    torch.save(out, os.path.join(a.dst, "model.pt"))


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
    o = sub.add_parser("olmo-export")
    o.add_argument("src")
    o.add_argument("dst")
    a = ap.parse_args()
    {"make-llama": make_llama, "safetensors-copy": safetensors_copy, "forward": forward, "olmo-export": olmo_export}[a.cmd](a)
