"""Checks that converted checkpoints load where users train (`make test-interop`).

transformers remote code (`convert --emit-modeling`): eval logits equal `vffn-convert run` on the
same checkpoint, and one training step gives every gate and FFN weight a finite non-zero gradient.
OLMo export (`convert --output-format olmo`): model.pt loads with weights_only=True, its tensors
equal the source's after the documented fusing, and a forward pass written here from those tensors
in OLMo's fused layout reproduces `vffn-convert run`.

Needs torch and transformers (the Makefile installs them into .build/interop/venv) and the release
build of vffn-convert ($VFFN_CONVERT).
"""

import json
import os
import re
import subprocess
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
TOOL = os.environ.get("VFFN_CONVERT", str(ROOT / ".build/release/vffn-convert"))
TOKENS = [1, 5, 9, 3, 7, 2, 11, 4, 200, 17, 42, 99]
TOLERANCE = 1e-4


def tool(*args):
    result = subprocess.run([TOOL, *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"vffn-convert {' '.join(map(str, args))} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def relative_error(actual, expected):
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def run_tokens(checkpoint, out_dir, dense=False, tokens=TOKENS):
    out = Path(out_dir) / ("dense.npy" if dense else "vffn.npy")
    tool("run", checkpoint, "--tokens", ",".join(map(str, tokens)), "--out", out, "--force", *(["--dense"] if dense else []))
    return np.load(out)


def load_state(directory):
    state = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        state.update(load_file(f))
    return state


# (fixture, Auto class, extra convert options): every model_type, and the clustered split.
PLAN = str(ROOT / "interop" / "plans" / "per-layer.json")
REMOTE_CODE_CASES = [
    ("llama-gqa-sharded", "AutoModelForCausalLM", []),
    # Layers left dense keep their stock MLP; per-layer N, k and D (a plan file).
    ("llama-gqa-sharded", "AutoModelForCausalLM", ["--layers", "1"]),
    ("gpt2-tiny", "AutoModelForCausalLM", ["--plan", PLAN]),
    ("bert-tiny", "AutoModel", ["--layers", "0"]),
    ("gpt-neox-tiny", "AutoModelForCausalLM", ["--plan", PLAN]),
    ("mistral-f16", "AutoModelForCausalLM", ["--split", "cluster", "--router-init", "centroid"]),
    ("qwen2-bf16-tied", "AutoModelForCausalLM", []),
    ("gpt2-tiny", "AutoModelForCausalLM", ["--top-k", "3"]),
    ("gpt2-noprefix-f16", "AutoModelForCausalLM", ["--split", "cluster"]),
    ("bert-tiny", "AutoModel", []),
    ("bert-noprefix-bf16", "AutoModel", ["--experts", "4", "--max-depth", "3"]),
    ("gguf/llama-gqa-q8_0.gguf", "AutoModelForCausalLM", []),
    ("qwen3-tiny", "AutoModelForCausalLM", []),
    ("qwen3-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster", "--router-init", "centroid"]),
    ("gguf/qwen3-tiny-f32.gguf", "AutoModelForCausalLM", []),
    ("smollm3-tiny", "AutoModelForCausalLM", []),
    ("smollm3-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster", "--top-k", "3"]),
    ("granite-tiny", "AutoModelForCausalLM", []),
    ("granite-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster", "--router-init", "centroid"]),
    ("olmo-tiny", "AutoModelForCausalLM", []),
    ("olmo-clip-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster"]),
    ("starcoder2-tiny", "AutoModelForCausalLM", []),
    ("starcoder2-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster", "--router-init", "centroid"]),
    ("phi3-longrope", "AutoModelForCausalLM", []),
    ("phi3-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster", "--router-init", "centroid"]),
    ("olmo2-tiny", "AutoModelForCausalLM", []),
    ("olmo2-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster", "--top-k", "3"]),
    ("gemma-tiny", "AutoModelForCausalLM", []),
    ("gemma-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster", "--router-init", "centroid"]),
    ("gemma2-tiny", "AutoModelForCausalLM", []),
    ("gemma2-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster", "--top-k", "3"]),
    ("gemma3-tiny", "AutoModelForCausalLM", []),
    ("gemma3-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster", "--router-init", "centroid"]),
    ("olmo3-tiny", "AutoModelForCausalLM", []),
    ("olmo3-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster", "--top-k", "3"]),
    ("gemma3-vlm-4x", "AutoModelForImageTextToText", []),
    ("gpt-neox-tiny", "AutoModelForCausalLM", []),
    ("gpt-neox-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster", "--router-init", "centroid"]),
    ("phi-tiny", "AutoModelForCausalLM", []),
    ("phi-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster", "--top-k", "3"]),
    ("cohere-tiny", "AutoModelForCausalLM", []),
    ("cohere-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster", "--router-init", "centroid"]),
    ("cohere2-tiny", "AutoModelForCausalLM", []),
    ("cohere2-bf16-4x", "AutoModelForCausalLM", ["--split", "cluster", "--top-k", "3"]),
]


# Stock classes that came after the oldest transformers the remote code supports.
NEWER_FAMILIES = {"qwen3": "Qwen3ForCausalLM", "smollm3": "SmolLM3ForCausalLM", "olmo2": "Olmo2ForCausalLM",
                  "gemma3-vlm": "Gemma3ForConditionalGeneration", "gemma3": "Gemma3ForCausalLM", "olmo3": "Olmo3ForCausalLM",
                  "cohere2": "Cohere2ForCausalLM"}


def unavailable(fixture):
    """Why this transformers cannot build the fixture's stock model, or None."""
    for family, cls in NEWER_FAMILIES.items():
        if family in fixture and not hasattr(transformers, cls):
            return f"transformers {transformers.__version__} has no {cls}"
    if fixture == "phi-tiny":
        import inspect
        from transformers.models.phi import modeling_phi
        source = inspect.getsource(modeling_phi.PhiAttention.forward)
        if source.find(".view(") > source.find("self.q_layernorm("):
            return f"transformers {transformers.__version__}'s Phi cannot run qk_layernorm (the remote code refuses it there)"
    if "phi3" in fixture:
        import inspect
        from transformers.models.phi3 import modeling_phi3
        if "partial_rotary_factor" not in inspect.getsource(modeling_phi3):
            return f"transformers {transformers.__version__}'s Phi-3 ignores partial_rotary_factor (the remote code refuses it there)"
    return None


def ffn_weight_names(model_type):
    if model_type in ("gpt2", "starcoder2"):
        return ["mlp.c_fc.weight", "mlp.c_proj.weight"]
    if model_type == "bert":
        return ["intermediate.dense.weight", "output.dense.weight"]
    if model_type == "phi3":
        return ["mlp.gate_up_proj.weight", "mlp.down_proj.weight"]
    if model_type == "gpt_neox":
        return ["mlp.dense_h_to_4h.weight", "mlp.dense_4h_to_h.weight"]
    if model_type == "phi":
        return ["mlp.fc1.weight", "mlp.fc2.weight"]
    return ["mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]


class RemoteCodeTests(unittest.TestCase):
    def convert(self, fixture, options, tmp):
        dst = Path(tmp) / "converted"
        tool("convert", FIXTURES / fixture, dst, "--emit-modeling", "--seed", "3", "--no-fsync", "--quiet", *options)
        return dst

    def load(self, dst, auto_class):
        # transformers 4 calls the dtype argument torch_dtype.
        dtype = {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": torch.float32}
        model, info = getattr(transformers, auto_class).from_pretrained(
            dst, trust_remote_code=True, output_loading_info=True, **dtype)
        self.assertEqual(sorted(info["missing_keys"]), [], "tensors the remote-code model did not find")
        unexpected = [k for k in info["unexpected_keys"] if "expert_gate" in k or "depth_predictor" in k or "mlp" in k]
        self.assertEqual(unexpected, [], "gate or FFN tensors the remote-code model did not use")
        self.assertTrue(type(model).__name__.startswith("Versatile"), type(model).__name__)
        return model

    @staticmethod
    def output(model, tokens):
        result = model(torch.tensor([tokens]))
        return (result.logits if hasattr(result, "logits") else result.last_hidden_state)[0]

    def test_eval_logits_equal_vffn_convert_run(self):
        for fixture, auto_class, options in REMOTE_CODE_CASES:
            if unavailable(fixture):
                print(f"  {fixture}: skipped, {unavailable(fixture)}")
                continue
            with self.subTest(fixture=fixture), tempfile.TemporaryDirectory() as tmp:
                dst = self.convert(fixture, options, tmp)
                self.assertTrue((dst / "modeling_versatile_ffn.py").is_file())
                expected = run_tokens(dst, tmp)
                dense = run_tokens(dst, tmp, dense=True)
                # The gates must matter on these tokens, or agreement would prove nothing.
                self.assertGreater(relative_error(dense, expected), 1e-3)
                model = self.load(dst, auto_class).eval()
                with torch.no_grad():
                    actual = self.output(model, TOKENS).numpy()
                error = relative_error(actual, expected)
                print(f"  {fixture}: remote code (transformers {transformers.__version__}) vs vffn-convert run, relative error {error:.2e}")
                self.assertLess(error, TOLERANCE)

    def test_one_training_step(self):
        for fixture, auto_class, options in REMOTE_CODE_CASES:
            if unavailable(fixture):
                print(f"  {fixture}: skipped, {unavailable(fixture)}")
                continue
            with self.subTest(fixture=fixture), tempfile.TemporaryDirectory() as tmp:
                torch.manual_seed(0)
                dst = self.convert(fixture, options, tmp)
                config = json.loads((dst / "config.json").read_text())
                model = self.load(dst, auto_class).train()
                tokens = torch.tensor([TOKENS])
                hidden = self.output(model, TOKENS)
                if auto_class == "AutoModel":
                    # BERT's encoder has no LM head here: score against the tied word embeddings.
                    hidden = hidden @ model.get_input_embeddings().weight.T
                loss = F.cross_entropy(hidden[:-1], tokens[0, 1:])
                self.assertTrue(torch.isfinite(loss), loss)
                loss.backward()
                checked = 0
                # Anchored at the layer index, so that BERT's attention.output.dense is not counted.
                wanted = re.compile(r"\.\d+\.(%s)$" % "|".join(map(re.escape, ["expert_gate.weight", "depth_predictor.weight", "mlp.expert_gate.weight",
                                                                            "mlp.depth_predictor.weight", *ffn_weight_names(config["model_type"])])))
                for name, p in model.named_parameters():
                    if wanted.search(name):
                        self.assertIsNotNone(p.grad, name)
                        self.assertTrue(torch.isfinite(p.grad).all(), name)
                        self.assertGreater(float(p.grad.abs().max()), 0.0, name)
                        checked += 1
                # Every layer's FFN weights (a layer left dense trains its stock MLP), and the gates of the upcycled ones.
                gated = len(config["versatile_ffn"]["gate_tensors"])
                text = config.get("text_config") or {}
                layers = config.get("num_hidden_layers") or config.get("n_layer") or text.get("num_hidden_layers")
                self.assertEqual(checked, 2 * gated + layers * len(ffn_weight_names(config["model_type"])))
                gate = next(p for n, p in model.named_parameters() if n.endswith("expert_gate.weight"))
                before = gate.detach().clone()
                torch.optim.AdamW(model.parameters(), lr=1e-3).step()
                self.assertFalse(torch.equal(before, gate.detach()), "the optimizer step left the gate unchanged")

                # What the trainer saves is again a checkpoint this tool runs and verifies.
                saved = Path(tmp) / "trained"
                model.save_pretrained(saved)
                tool("verify", saved)
                model.eval()
                with torch.no_grad():
                    trained = self.output(model, TOKENS).numpy()
                self.assertLess(relative_error(trained, run_tokens(saved, tmp)), TOLERANCE)

    def test_phi3_refused_where_partial_rotary_is_ignored(self):
        """Under a transformers whose Phi-3 rotates whole heads, the remote code refuses rather
        than compute another function; elsewhere this test has nothing to check."""
        reason = unavailable("phi3-longrope")
        if not reason or "partial_rotary_factor" not in reason:
            self.skipTest(f"transformers {transformers.__version__} honours partial_rotary_factor")
        with tempfile.TemporaryDirectory() as tmp:
            dst = self.convert("phi3-longrope", [], tmp)
            with self.assertRaisesRegex(ValueError, "ignores partial_rotary_factor for Phi-3"):
                transformers.AutoModelForCausalLM.from_pretrained(dst, trust_remote_code=True)

    def test_parallel_layers_train_with_gradient_checkpointing(self):
        """A parallel layer's FFN block reads the layer's input, which a checkpointed layer must
        capture again when backward recomputes it (transformers 5 checkpoints forward without
        the module's hooks): every gate still gets a gradient."""
        for fixture in ["gpt-neox-tiny", "phi-bf16-4x", "cohere-tiny", "cohere2-tiny"]:
            if unavailable(fixture):
                print(f"  {fixture}: skipped, {unavailable(fixture)}")
                continue
            with self.subTest(fixture=fixture), tempfile.TemporaryDirectory() as tmp:
                torch.manual_seed(0)
                model = self.load(self.convert(fixture, [], tmp), "AutoModelForCausalLM").train()
                model.gradient_checkpointing_enable()
                tokens = torch.tensor([TOKENS])
                loss = F.cross_entropy(self.output(model, TOKENS)[:-1], tokens[0, 1:])
                loss.backward()
                gates = [(n, p) for n, p in model.named_parameters() if n.endswith(("expert_gate.weight", "depth_predictor.weight"))]
                self.assertEqual(len(gates), 2 * model.config.num_hidden_layers)
                for name, p in gates:
                    self.assertIsNotNone(p.grad, name)
                    self.assertGreater(float(p.grad.abs().max()), 0.0, name)

    def test_phi_refused_where_qk_layernorm_cannot_run(self):
        """Under a transformers whose Phi normalizes q and k before splitting the heads (which
        fails), the remote code refuses with one line; elsewhere this test has nothing to check."""
        reason = unavailable("phi-tiny")
        if not reason:
            self.skipTest(f"transformers {transformers.__version__} runs Phi's qk_layernorm")
        with tempfile.TemporaryDirectory() as tmp:
            dst = self.convert("phi-tiny", [], tmp)
            with self.assertRaisesRegex(ValueError, "Phi cannot run qk_layernorm"):
                transformers.AutoModelForCausalLM.from_pretrained(dst, trust_remote_code=True)

    def test_depth_temperature_schedule(self):
        """The temperature step is the model's: one per optimizer step that updates it, whatever
        the forwards (accumulated, recomputed, in eval); set by set_depth_temperature_step; saved
        in config.json and read back."""
        with tempfile.TemporaryDirectory() as tmp:
            dst = self.convert("llama-gqa-sharded", [], tmp)
            model = self.load(dst, "AutoModelForCausalLM").train()
            module = __import__(type(model).__module__, fromlist=["depth_temperature"])
            self.assertEqual(module.depth_temperature(0), 5.0)
            self.assertAlmostEqual(module.depth_temperature(1000), 5.0 * 0.99984**1000, places=12)
            self.assertEqual(module.depth_temperature(10**6), 0.1)
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
            for _ in range(2):   # two accumulated forwards, one optimizer step
                model(torch.tensor([TOKENS])).logits.sum().backward()
            self.assertEqual(model.versatile_depth_step, 0)
            optimizer.step()
            self.assertEqual(model.versatile_depth_step, 1)
            blocks = [m for m in model.modules() if hasattr(m, "depth_temperature")]
            self.assertEqual(len(blocks), 2)
            model(torch.tensor([TOKENS]))
            self.assertEqual([b.depth_temperature for b in blocks], [module.depth_temperature(1)] * 2)
            # An optimizer over other parameters leaves this model's schedule alone; a second
            # optimizer stepping after the same forwards (ZeroRedundancyOptimizer's nested step,
            # two optimizers) does not count twice.
            torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1).step()
            self.assertEqual(model.versatile_depth_step, 1)
            model(torch.tensor([TOKENS])).logits.sum().backward()
            optimizer.step()
            torch.optim.SGD(model.parameters(), lr=1e-3).step()
            self.assertEqual(model.versatile_depth_step, 2)
            model.set_depth_temperature_step(1)
            # The Trainer callback sets the step from the Trainer's global step, through wrappers.
            callback = module.DepthTemperatureCallback()
            callback.on_step_begin(None, transformers.TrainerState(global_step=7), None, model=type("Wrapped", (), {"module": model})())
            self.assertEqual(model.versatile_depth_step, 7)
            model.set_depth_temperature_step(5000)
            model.eval()
            optimizer.step()
            self.assertEqual(model.versatile_depth_step, 5000, "an eval model's schedule does not move")
            model.save_pretrained(Path(tmp) / "saved")
            self.assertEqual(json.loads((Path(tmp) / "saved" / "config.json").read_text())["versatile_ffn"]["depth_temperature_step"], 5000)
            self.assertEqual(self.load(Path(tmp) / "saved", "AutoModelForCausalLM").versatile_depth_step, 5000)
            tool("verify", Path(tmp) / "saved")

    def test_gradient_checkpointing_gives_the_same_gradients(self):
        """A checkpointed layer recomputes its forward at the same temperature and Gumbel noise,
        so the gradients are those of the run without checkpointing."""
        with tempfile.TemporaryDirectory() as tmp:
            dst = self.convert("llama-gqa-sharded", [], tmp)
            grads = []
            for checkpointing in (False, True):
                model = self.load(dst, "AutoModelForCausalLM").train()
                if checkpointing:
                    model.gradient_checkpointing_enable()
                torch.manual_seed(7)
                tokens = torch.tensor([TOKENS])
                F.cross_entropy(model(tokens).logits[0, :-1], tokens[0, 1:]).backward()
                grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            self.assertEqual(sorted(grads[0]), sorted(grads[1]))
            for name in grads[0]:
                self.assertLess(float((grads[0][name] - grads[1][name]).abs().max()), 1e-6 * max(1.0, float(grads[0][name].abs().max())), name)

    def test_router_aux_loss(self):
        """With router_aux_loss_coef, a training forward returns Mixtral's load-balance loss over
        every layer's routing (recomputed here from the gates and the blocks' inputs) as
        `aux_loss` and adds it, times the coefficient, to the loss; the router gets its gradient."""
        with tempfile.TemporaryDirectory() as tmp:
            dst = self.convert("llama-gqa-sharded", [], tmp)
            config = json.loads((dst / "config.json").read_text())
            config["versatile_ffn"]["router_aux_loss_coef"] = 0.01
            (dst / "config.json").write_text(json.dumps(config))
            model = self.load(dst, "AutoModelForCausalLM").train()
            n, k = config["versatile_ffn"]["num_experts"], config["versatile_ffn"]["top_k"]
            inputs = []
            blocks = [m for m in model.modules() if hasattr(m, "expert_gate") and hasattr(m, "top_k")]
            hooks = [b.register_forward_pre_hook(lambda m, a: inputs.append((m, a[0].detach()))) for b in blocks]
            torch.manual_seed(0)
            tokens = torch.tensor([TOKENS])
            out = model(tokens, labels=tokens)
            for h in hooks:
                h.remove()
            choices, probs = [], []
            for block, x in inputs:
                logits = (x @ block.expert_gate.weight.T).reshape(-1, n)
                top = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :k]
                choices.append(F.one_hot(top, n).sum(dim=1).float())
                probs.append(torch.softmax(logits, dim=-1))
            expected = n * (torch.cat(choices).mean(dim=0) * torch.cat(probs).mean(dim=0)).sum()
            self.assertEqual(len(inputs), 2)
            self.assertAlmostEqual(float(out.aux_loss), float(expected), places=5)
            self.assertGreaterEqual(float(out.aux_loss), k * 0.999, "the loss is at least k, reached when balanced")
            torch.manual_seed(0)
            model.versatile_aux_loss_coef = 0.0
            plain = model(tokens, labels=tokens)
            self.assertFalse(hasattr(plain, "aux_loss") and plain.aux_loss is not None)
            self.assertAlmostEqual(float(out.loss), float(plain.loss) + 0.01 * float(expected), places=4)
            out.loss.backward()
            gate = next(p for n_, p in model.named_parameters() if n_.endswith("expert_gate.weight"))
            self.assertGreater(float(gate.grad.abs().max()), 0.0)


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def olmo_norm(model, sd, name):
    """OLMo's LayerNorm as config.yaml describes it: RMS with a weight, or (OLMo 1) the default
    LayerNorm without weight or bias, which has no tensor."""
    eps = model["layer_norm_eps"]
    if model["layer_norm_type"] == "default" and not model["layer_norm_with_affine"]:
        return lambda x: F.layer_norm(x, (x.shape[-1],), None, None, eps)
    assert model["layer_norm_type"] == "rms" and model["layer_norm_with_affine"], model["layer_norm_type"]
    return lambda x: rms_norm(x, sd[name], eps)


def olmo_forward(sd, model, tokens):
    """A forward pass over OLMo's fused layout, written from OLMo's definitions (OLMoSequentialBlock,
    RotaryEmbedding, SwiGLU) and SPEC section 1 for the VersatileFFN sub-layer; nothing here reads
    the Hugging Face names, so the fusing and config.yaml are what is tested."""
    d, heads, kv_heads = model["d_model"], model["n_heads"], model["n_kv_heads"]
    head_dim = d // heads
    settings = model["versatile_ffn"]
    experts, top_k, depth = settings["num_experts"], settings["top_k"], settings["max_depth"]
    T = len(tokens)
    inv_freq = 1.0 / (model["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    sin, cos = angles.sin().float(), angles.cos().float()

    def rotate(t):
        t1, t2 = t[..., : head_dim // 2], t[..., head_dim // 2 :]
        return t * cos + torch.cat((-t2, t1), dim=-1) * sin

    def linear(x, name):
        return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))

    # OLMoSequentialBlock with norm_after (OLMo 2) applies attn_norm and ff_norm to the outputs
    # of attention and the FFN instead of their inputs; attention_layer_norm adds q_norm and
    # k_norm over the whole projections, before the heads are split.
    after = model.get("norm_after", False)
    identity = lambda h: h  # noqa: E731
    x = sd["transformer.wte.weight"][torch.tensor(tokens)]
    for i in range(model["n_layers"]):
        b = f"transformer.blocks.{i}."
        attn_norm, ff_norm = olmo_norm(model, sd, b + "attn_norm.weight"), olmo_norm(model, sd, b + "ff_norm.weight")
        qkv = linear(identity(x) if after else attn_norm(x), b + "att_proj")
        if model["clip_qkv"] is not None:
            qkv = qkv.clamp(min=-model["clip_qkv"], max=model["clip_qkv"])
        q, k, v = qkv.split((d, kv_heads * head_dim, kv_heads * head_dim), dim=-1)
        if model.get("attention_layer_norm", False):
            q, k = rms_norm(q, sd[b + "q_norm.weight"], model["layer_norm_eps"]), rms_norm(k, sd[b + "k_norm.weight"], model["layer_norm_eps"])
        q = rotate(q.view(T, heads, head_dim).transpose(0, 1))
        k = rotate(k.view(T, kv_heads, head_dim).transpose(0, 1)).repeat_interleave(heads // kv_heads, dim=0)
        v = v.view(T, kv_heads, head_dim).transpose(0, 1).repeat_interleave(heads // kv_heads, dim=0)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(0, 1).reshape(T, d)
        att = linear(att, b + "attn_out")
        x = x + (attn_norm(att) if after else att)

        ff_out = sd[b + "ff_out.weight"]
        neurons = ff_out.shape[1]

        def activations(h):
            up, gate = linear(h if after else ff_norm(h), b + "ff_proj").chunk(2, dim=-1)
            return F.silu(gate) * up

        def project(a):
            out = F.linear(a, ff_out, sd.get(b + "ff_out.bias"))
            return ff_norm(out) if after else out

        def sublayer(h):
            return h + project(activations(h))

        logits = F.linear(x, sd[b + "expert_gate.weight"])
        chosen = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :top_k]
        weights = torch.softmax(logits.gather(-1, chosen), dim=-1)
        a = activations(x)
        x_width = torch.zeros_like(x)
        for slot in range(top_k):
            mask = torch.zeros(T, neurons)
            for t in range(T):
                e = int(chosen[t, slot])
                mask[t, e * neurons // experts : (e + 1) * neurons // experts] = 1
            x_width = x_width + weights[:, slot : slot + 1] * (x + project(a * mask))
        loops = F.linear(x, sd[b + "depth_predictor.weight"]).argmax(dim=-1) + 1
        outputs, h = [], x
        for _ in range(depth):
            h = sublayer(h)
            outputs.append(h)
        x_depth = torch.stack([outputs[int(loops[t]) - 1][t] for t in range(T)])
        m = ((depth - loops).float() / depth).unsqueeze(-1)
        x = (1 - m) * x_depth + m * x_width
    x = olmo_norm(model, sd, "transformer.ln_f.weight")(x)
    if model["weight_tying"]:
        return F.linear(x, sd["transformer.wte.weight"])
    return linear(x, "transformer.ff_out")


# (fixture, extra convert options, tokens): OLMo export takes the Llama family.
OLMO_CASES = [
    ("llama-gqa-sharded", [], TOKENS),
    ("llama-gqa-sharded", ["--split", "cluster", "--router-init", "centroid", "--top-k", "3"], TOKENS),
    ("qwen2-bf16-tied", [], TOKENS),
    # Mistral's sliding window (4 here) caps max_sequence_length, so four tokens.
    ("mistral-f16", ["--max-depth", "2"], TOKENS[:4]),
    ("gguf/qwen2-bf16.gguf", [], TOKENS),
    # OLMo 1 back in its own layout: no norm tensors, layer_norm_type default; 1.7's clip_qkv.
    ("olmo-tiny", [], TOKENS),
    ("olmo-clip-bf16-4x", ["--split", "cluster"], TOKENS),
    # OLMo 2 as norm_after with full-width q/k norms; the second with attention biases, tied.
    ("olmo2-tiny", [], TOKENS),
    ("olmo2-bf16-4x", ["--split", "cluster", "--top-k", "3"], TOKENS),
]


class OLMoExportTests(unittest.TestCase):
    def test_model_pt_loads_fuses_and_reproduces_run(self):
        for fixture, options, tokens in OLMO_CASES:
            with self.subTest(fixture=fixture, options=options), tempfile.TemporaryDirectory() as tmp:
                olmo, hf = Path(tmp) / "olmo", Path(tmp) / "hf"
                common = ["--seed", "5", "--no-fsync", "--quiet", *options]
                tool("convert", FIXTURES / fixture, olmo, "--output-format", "olmo", *common)
                tool("convert", FIXTURES / fixture, hf, *common)
                sd = torch.load(olmo / "model.pt", weights_only=True)
                config = yaml.safe_load((olmo / "config.yaml").read_text())
                model = config["model"]
                self.assertEqual(Path(config["load_path"]), olmo.resolve())

                # Tensors: the Hugging Face conversion's (same seed), fused as documented.
                source = load_state(hf)
                hf_config = json.loads((hf / "config.json").read_text())
                expected = {"transformer.wte.weight": source["model.embed_tokens.weight"]}
                # OLMo 1's norms have no tensors in either layout.
                if "model.norm.weight" in source:
                    expected["transformer.ln_f.weight"] = source["model.norm.weight"]
                if not hf_config.get("tie_word_embeddings", False):
                    expected["transformer.ff_out.weight"] = source["lm_head.weight"]
                for i in range(hf_config["num_hidden_layers"]):
                    l, b = f"model.layers.{i}.", f"transformer.blocks.{i}."
                    expected[b + "att_proj.weight"] = torch.cat([source[l + f"self_attn.{p}_proj.weight"] for p in "qkv"])
                    expected[b + "attn_out.weight"] = source[l + "self_attn.o_proj.weight"]
                    expected[b + "ff_proj.weight"] = torch.cat([source[l + "mlp.up_proj.weight"], source[l + "mlp.gate_proj.weight"]])
                    expected[b + "ff_out.weight"] = source[l + "mlp.down_proj.weight"]
                    if l + "input_layernorm.weight" in source:
                        expected[b + "attn_norm.weight"] = source[l + "input_layernorm.weight"]
                        expected[b + "ff_norm.weight"] = source[l + "post_attention_layernorm.weight"]
                    elif l + "post_feedforward_layernorm.weight" in source:
                        # OLMo 2: the norms on the sub-layers' outputs, and the q/k norms.
                        self.assertTrue(model["norm_after"] and model["attention_layer_norm"])
                        expected[b + "attn_norm.weight"] = source[l + "post_attention_layernorm.weight"]
                        expected[b + "ff_norm.weight"] = source[l + "post_feedforward_layernorm.weight"]
                        expected[b + "q_norm.weight"] = source[l + "self_attn.q_norm.weight"]
                        expected[b + "k_norm.weight"] = source[l + "self_attn.k_norm.weight"]
                    expected[b + "expert_gate.weight"] = source[l + "mlp.expert_gate.weight"]
                    expected[b + "depth_predictor.weight"] = source[l + "mlp.depth_predictor.weight"]
                    if model["include_bias"]:
                        dtype = source[l + "self_attn.q_proj.weight"].dtype
                        expected[b + "att_proj.bias"] = torch.cat([source[l + f"self_attn.{p}_proj.bias"] for p in "qkv"])
                        expected[b + "attn_out.bias"] = source.get(l + "self_attn.o_proj.bias", torch.zeros(hf_config["hidden_size"], dtype=dtype))
                        expected[b + "ff_proj.bias"] = torch.zeros(2 * hf_config["intermediate_size"], dtype=dtype)
                        expected[b + "ff_out.bias"] = torch.zeros(hf_config["hidden_size"], dtype=dtype)
                self.assertEqual(sorted(sd), sorted(expected))
                for name, tensor in expected.items():
                    self.assertEqual(sd[name].dtype, tensor.dtype, name)
                    self.assertTrue(torch.equal(sd[name], tensor), name)

                # config.yaml describes the network the tensors make.
                self.assertEqual(model["d_model"], hf_config["hidden_size"])
                self.assertEqual(model["mlp_hidden_size"], sd["transformer.blocks.0.ff_proj.weight"].shape[0])
                self.assertEqual(model["n_layers"], hf_config["num_hidden_layers"])
                self.assertEqual(model["weight_tying"], hf_config.get("tie_word_embeddings", False))
                self.assertEqual(model["versatile_ffn"]["num_experts"], hf_config["versatile_ffn"]["num_experts"])

                with torch.no_grad():
                    actual = olmo_forward({k: v.float() for k, v in sd.items()}, model, tokens).numpy()
                reference = run_tokens(hf, tmp, tokens=tokens)
                error = relative_error(actual, reference)
                print(f"  {fixture} {' '.join(options)}: OLMo layout forward vs vffn-convert run, relative error {error:.2e}")
                self.assertLess(error, TOLERANCE)


if __name__ == "__main__":
    unittest.main()
