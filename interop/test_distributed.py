"""Training a converted checkpoint on the engines people scale with (`make test-distributed`),
on CPU with gloo and 2 processes: torchrun with DDP and with FSDP2 (`fully_shard`, gradient
checkpointing on), and the Hugging Face Trainer under `accelerate launch`. What they save is
again a checkpoint vffn-convert runs and verifies, and from_pretrained reloads.

Needs the interop venv (torch, transformers, accelerate) and the release vffn-convert.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import transformers

ROOT = Path(__file__).resolve().parent.parent
TOOL = os.environ.get("VFFN_CONVERT", str(ROOT / ".build/release/vffn-convert"))
BIN = Path(sys.executable).parent
# A tied fixture: FSDP2's gathered state dict holds the head as a copy, which the save drops.
FIXTURE = ROOT / "fixtures" / "qwen2-bf16-tied"


def tool(*args):
    subprocess.run([TOOL, *map(str, args)], check=True, capture_output=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command, port):
    result = subprocess.run([*command], capture_output=True, text=True, cwd=ROOT,
                            env=dict(os.environ, MASTER_PORT=str(port), OMP_NUM_THREADS="1"))
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command[:3]))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")


class DistributedTrainingTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = Path(cls.tmp.name)
        cls.converted = cls.dir / "converted"
        tool("convert", FIXTURE, cls.converted, "--emit-modeling", "--seed", "3", "--no-fsync", "--quiet")
        # The same with the load-balance loss on: its term is part of every loss compared below.
        config = json.loads((cls.converted / "config.json").read_text())
        config["versatile_ffn"]["router_aux_loss_coef"] = 0.01
        (cls.converted / "config.json").write_text(json.dumps(config, indent=2))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def torchrun(self, name, *options):
        out, port = self.dir / f"{name}.json", free_port()
        launch([BIN / "torchrun", "--nproc_per_node", "2", "--master_port", str(port), ROOT / "interop" / "distributed_train.py",
                self.converted, "--out", out, *options], port)
        return json.loads(out.read_text())

    def test_ddp_and_fsdp2_train_alike_and_save_what_vffn_convert_reads(self):
        ddp = self.torchrun("ddp", "--mode", "ddp", "--steps", "20")
        saved = self.dir / "fsdp-saved"
        fsdp = self.torchrun("fsdp", "--mode", "fsdp", "--steps", "20", "--checkpointing", "--save", saved)
        print(f"  DDP loss {ddp['losses'][0]:.3f} -> {ddp['losses'][-1]:.3f}; FSDP2 + checkpointing the same to "
              f"{max(abs(a - b) / abs(a) for a, b in zip(ddp['losses'], fsdp['losses'])):.1e} relative")
        for run in (ddp, fsdp):
            self.assertTrue(run["gated"], "a gate had no gradient on a rank")
            self.assertTrue(run["identical"], "the ranks' parameters diverged")
            self.assertEqual(run["gates"], 4)
            # One temperature step per optimizer step, the same on every rank.
            self.assertEqual(run["depth_steps"], [20, 20])
        self.assertLess(ddp["losses"][-1], 0.8 * ddp["losses"][0])
        # The load-balance term is in every loss (at least k = 2 when balanced), the same on both.
        self.assertTrue(all(a is not None and a >= 2 * 0.999 for a in ddp["aux"] + fsdp["aux"]))
        for a, b in zip(ddp["losses"], fsdp["losses"]):
            self.assertLess(abs(a - b), 1e-4 * abs(a))

        config = json.loads((saved / "config.json").read_text())
        self.assertEqual(config["auto_map"]["AutoModelForCausalLM"], "modeling_versatile_ffn.VersatileQwen2ForCausalLM")
        self.assertEqual(config["versatile_ffn"]["depth_temperature_step"], 20)
        self.assertEqual(sorted(p.name for p in saved.iterdir()), ["config.json", "generation_config.json", "model.safetensors", "modeling_versatile_ffn.py"])
        tool("verify", saved)
        tool("run", saved, "--tokens", "1,2,3", "--out", self.dir / "out.npy")
        from safetensors import safe_open
        with safe_open(saved / "model.safetensors", "pt") as st:
            self.assertNotIn("lm_head.weight", list(st.keys()), "the tied head was saved as a copy")
        model = transformers.AutoModelForCausalLM.from_pretrained(saved, trust_remote_code=True)
        self.assertEqual(model.versatile_depth_step, 20, "the temperature step did not survive save and resume")

    def test_trainer_under_accelerate(self):
        out, result, port = self.dir / "trainer-saved", self.dir / "trainer.json", free_port()
        launch([BIN / "accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", str(port), ROOT / "interop" / "trainer_train.py", self.converted, out, result], port)
        r = json.loads(result.read_text())
        print(f"  Trainer, 2 processes, 4 optimizer steps of 2 accumulated batches: losses {[round(x, 3) for x in r['losses']]}")
        self.assertEqual((r["world"], r["global_step"]), (2, 4))
        # Gradient accumulation: one temperature step per optimizer step, not per forward, on
        # every rank.
        self.assertEqual(r["depth_steps"], [4, 4])
        self.assertTrue(all(x == x and x < 1e4 for x in r["losses"]))
        tool("verify", out)
        model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
        self.assertEqual(model.versatile_depth_step, 4)


if __name__ == "__main__":
    unittest.main()
