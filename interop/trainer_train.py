"""Hugging Face Trainer on a converted checkpoint, one process of `accelerate launch
--multi_gpu --num_processes 2 interop/trainer_train.py DIR OUT RESULT` on CPU: a few optimizer
steps with gradient accumulation on a fixed synthetic dataset, without gradient checkpointing (so
the Trainer's DDP looks for unused parameters and rebuilds the model's outputs), then
`save_model` to OUT. The main process writes the losses and the ranks' temperature steps to
RESULT (JSON).
"""
import json
import sys
import tempfile

import torch
import transformers


class Tokens(torch.utils.data.Dataset):
    def __init__(self, vocab):
        g = torch.Generator().manual_seed(5)
        self.rows = torch.randint(0, vocab, (16, 12), generator=g)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def main():
    checkpoint, out, result = sys.argv[1:4]
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        args = transformers.TrainingArguments(
            output_dir=tmp, max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=3e-3,
            use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, ddp_backend="gloo", dataloader_num_workers=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(model.config.vocab_size))
        trainer.train()
        trainer.save_model(out)
        steps = [torch.zeros(1, dtype=torch.long) for _ in range(trainer.args.world_size)]
        torch.distributed.all_gather(steps, torch.tensor([model.versatile_depth_step]))
        if trainer.is_world_process_zero():
            losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
            json.dump({"losses": losses, "global_step": trainer.state.global_step, "world": trainer.args.world_size,
                       "depth_steps": [int(s) for s in steps]}, open(result, "w"))


if __name__ == "__main__":
    main()
