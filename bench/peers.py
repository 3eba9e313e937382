#!/usr/bin/env python3
"""The Python side of bench/run.sh: makes the benchmark checkpoints and runs the peers.

    peers.py make-llama DIR --hidden H --layers L --intermediate I --vocab V --heads N --kv K [--shard SIZE]
    peers.py make-llama-bf16 DIR --hidden H ... [--tied] [--shard-gb G]   # numpy, straight to safetensors
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


def make_llama_bf16(a):
    """A bf16 Llama of any size written straight to safetensors with numpy, one tensor at a time:
    torch would need the whole model in memory (an 8B model is 16 GB in bf16, 32 GB in f32)."""
    import numpy as np
    rng = np.random.default_rng(0)
    hd = a.hidden // a.heads
    shapes = [("model.embed_tokens.weight", (a.vocab, a.hidden))]
    for i in range(a.layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (a.hidden,)), (p + "post_attention_layernorm.weight", (a.hidden,)),
                   (p + "self_attn.q_proj.weight", (a.heads * hd, a.hidden)), (p + "self_attn.k_proj.weight", (a.kv * hd, a.hidden)),
                   (p + "self_attn.v_proj.weight", (a.kv * hd, a.hidden)), (p + "self_attn.o_proj.weight", (a.hidden, a.heads * hd)),
                   (p + "mlp.gate_proj.weight", (a.intermediate, a.hidden)), (p + "mlp.up_proj.weight", (a.intermediate, a.hidden)),
                   (p + "mlp.down_proj.weight", (a.hidden, a.intermediate))]
    shapes.append(("model.norm.weight", (a.hidden,)))
    if not a.tied:
        shapes.append(("lm_head.weight", (a.vocab, a.hidden)))
    shutil.rmtree(a.dir, ignore_errors=True)
    os.makedirs(a.dir)
    limit = int(a.shard_gb * 1e9)
    shards, current, size = [], [], 0
    for name, shape in shapes:
        n = 2 * int(np.prod(shape))
        if current and size + n > limit:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += n
    shards.append(current)
    weight_map = {}
    for k, tensors in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in tensors:
            n = 2 * int(np.prod(shape))
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[name] = fname
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        with open(os.path.join(a.dir, fname), "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for name, shape in tensors:
                if name.endswith("norm.weight"):
                    values = np.ones(shape, dtype=np.float32)
                else:
                    values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
                # bf16 is the top half of the f32 bit pattern (rounded to nearest even).
                bits = values.view(np.uint32)
                bits = bits + 0x7FFF + ((bits >> 16) & 1)
                f.write((bits >> 16).astype(np.uint16).tobytes())
    json.dump({"metadata": {"total_size": sum(2 * int(np.prod(s)) for _, s in shapes)}, "weight_map": weight_map},
              open(os.path.join(a.dir, "model.safetensors.index.json"), "w"), indent=2)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": a.vocab, "hidden_size": a.hidden,
              "intermediate_size": a.intermediate, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
              "num_key_value_heads": a.kv, "head_dim": hd, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": a.tied, "torch_dtype": "bfloat16", "rope_theta": 500000.0,
              "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192},
              "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "bos_token_id": 128000, "eos_token_id": 128001}
    json.dump(config, open(os.path.join(a.dir, "config.json"), "w"), indent=2)
    params = sum(int(np.prod(s)) for _, s in shapes)
    print(f"{a.dir}: {params / 1e9:.2f}B parameters (bf16) in {len(shards)} shards")


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


def make_gguf_q8(a):
    """A bf16 safetensors Llama as llama.cpp's converter writes it to GGUF with gguf-py: Q/K rows
    permuted to its rotary layout, every matrix Q8_0, the norms F32 (no tokenizer, no rope_freqs)."""
    import numpy as np
    import gguf
    from safetensors import safe_open
    config = json.load(open(os.path.join(a.src, "config.json")))
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    w = gguf.GGUFWriter(a.dst, "llama")
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(8192)
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config["rope_theta"])
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    leaves = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
              "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}

    def permute(t, n):
        return t.reshape(n, 2, t.shape[0] // n // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)
    import torch
    for f in sorted(x for x in os.listdir(a.src) if x.endswith(".safetensors")):
        with safe_open(os.path.join(a.src, f), "pt") as st:
            for k in st.keys():
                x = st.get_tensor(k).float().numpy()
                x = x.astype(np.float32)
                if k in names:
                    name = names[k]
                else:
                    parts = k.split(".")
                    name = f"blk.{parts[2]}.{leaves['.'.join(parts[3:-1])]}.weight"
                if k.endswith("q_proj.weight"):
                    x = permute(x, heads)
                elif k.endswith("k_proj.weight"):
                    x = permute(x, kv)
                if x.ndim == 2:
                    w.add_tensor(name, gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                else:
                    w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{a.dst}: {os.path.getsize(a.dst) / 1e9:.2f} GB Q8_0 GGUF")


def make_bin(a):
    """The same checkpoint as one torch.save pytorch_model.bin (stored zip entries)."""
    import torch
    from safetensors.torch import load_file
    shutil.rmtree(a.dst, ignore_errors=True)
    os.makedirs(a.dst)
    state = {}
    for f in sorted(os.listdir(a.src)):
        if f.endswith(".safetensors"):
            state.update(load_file(os.path.join(a.src, f)))
        elif not f.endswith(".index.json"):
            shutil.copy(os.path.join(a.src, f), os.path.join(a.dst, f))
    torch.save(state, os.path.join(a.dst, "pytorch_model.bin"))
    print(f"{a.dst}: {os.path.getsize(os.path.join(a.dst, 'pytorch_model.bin')) / 1e9:.2f} GB pytorch_model.bin")


def forward(a):
    started = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(a.dir, dtype=torch.float32, attn_implementation="eager",
                                                 trust_remote_code=os.path.exists(os.path.join(a.dir, "modeling_versatile_ffn.py"))).eval()
    # The token ids bench/run.sh gives vffn-convert (every bench model has at least 32000).
    tokens = torch.tensor([[(i * 7919) % 32000 for i in range(a.tokens)]])
    loaded = time.perf_counter()
    logits = model(tokens).logits
    done = time.perf_counter()
    # A warm process: the forward again, after its first run allocated and touched everything.
    warm = []
    for _ in range(a.warm):
        t0 = time.perf_counter()
        model(tokens)
        warm.append(time.perf_counter() - t0)
    if a.out:
        import numpy as np
        np.save(a.out, logits[0].float().numpy())
    print(json.dumps({"import_and_load_s": loaded - started, "forward_s": done - loaded,
                      "warm_forward_s": min(warm) if warm else None, "shape": list(logits.shape),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-llama")
    m.add_argument("dir")
    for k in ["hidden", "layers", "intermediate", "vocab", "heads", "kv"]:
        m.add_argument("--" + k, type=int, required=True)
    m.add_argument("--shard", default="5GB")
    b = sub.add_parser("make-llama-bf16")
    b.add_argument("dir")
    for k in ["hidden", "layers", "intermediate", "vocab", "heads", "kv"]:
        b.add_argument("--" + k, type=int, required=True)
    b.add_argument("--tied", action="store_true")
    b.add_argument("--shard-gb", type=float, default=5.0)
    c = sub.add_parser("safetensors-copy")
    c.add_argument("src")
    c.add_argument("dst")
    f = sub.add_parser("forward")
    f.add_argument("dir")
    f.add_argument("--tokens", type=int, default=256)
    f.add_argument("--warm", type=int, default=0, help="time this many more forwards in the same process")
    f.add_argument("--out", help="save the first forward's logits as .npy")
    o = sub.add_parser("olmo-export")
    o.add_argument("src")
    o.add_argument("dst")
    g = sub.add_parser("make-gguf-q8")
    g.add_argument("src")
    g.add_argument("dst")
    n = sub.add_parser("make-bin")
    n.add_argument("src")
    n.add_argument("dst")
    a = ap.parse_args()
    {"make-gguf-q8": make_gguf_q8, "make-bin": make_bin, "make-llama": make_llama, "make-llama-bf16": make_llama_bf16, "safetensors-copy": safetensors_copy, "forward": forward, "olmo-export": olmo_export}[a.cmd](a)
