"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU): the gradient
monitor under DDP and FSDP2, a planted NaN on rank 1, the Trainer's callback (accelerate's DDP),
and a monitor attached on rank 0 only.
Each rank writes what it saw to OUT/rank<r>.json; the test compares them with one process."""

from __future__ import annotations

import copy
import json
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

import llm_widgets as lw

ROWS, LENGTH, STEPS = 8, 12, 3


def tiny_llama(dropout: float = 0.0) -> torch.nn.Module:
    """A tiny Llama (vocabulary 64, untied embeddings), seeded, in training mode."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        attention_dropout=dropout,
    )
    return transformers.LlamaForCausalLM(config).train()


def global_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 60, (ROWS, LENGTH), generator=g) for _ in range(STEPS)]


def norms(monitor) -> list[dict]:
    return [{r["group"]: r["grad_norm"] for r in monitor.rows if r["step"] == s["step"]} for s in monitor.steps]


def train(model, monitor, batches, rank: int, world: int, steer_on_rank0: bool = False) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step, batch in enumerate(batches, start=1):
        part = batch.chunk(world)[rank]
        loss = model(input_ids=part, labels=part).loss
        optimizer.zero_grad()
        loss.backward()
        if steer_on_rank0 and step == 2 and rank == 0:  # a slider moved in rank 0's notebook
            monitor.steer("layer 0", scale=0.25)
        monitor.step(loss=loss)
        optimizer.step()


def checksum(model) -> float:
    total = 0.0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += float(local.detach().double().sum())
    return total


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    seen: dict = {"rank": rank}
    batches = global_batches()

    ddp = DistributedDataParallel(tiny_llama())
    monitor = lw.GradientMonitor(ddp, warn=False)
    train(ddp, monitor, batches, rank, world, steer_on_rank0=True)
    seen["ddp"] = norms(monitor)
    seen["ddp_steered"] = [r["steered_norm"] for r in monitor.rows if r["step"] == 2 and r["group"] == "layer 0"]
    seen["ddp_checksum"] = checksum(ddp)
    seen["ranks"] = monitor.steps[-1]["ranks"]
    seen["ranks_frame"] = monitor.ranks_dataframe().shape
    seen["warn"] = monitor.warn
    monitor.detach()

    fsdp = tiny_llama()
    monitor = lw.GradientMonitor(fsdp, warn=False)  # made before sharding, as with the Trainer (it shards in train())
    for layer in fsdp.model.layers:
        fully_shard(layer)
    fully_shard(fsdp)
    train(fsdp, monitor, batches, rank, world, steer_on_rank0=True)
    seen["fsdp"] = norms(monitor)
    seen["fsdp_steered"] = [r["steered_norm"] for r in monitor.rows if r["step"] == 2 and r["group"] == "layer 0"]
    monitor.detach()

    poisoned = tiny_llama()
    with torch.no_grad():
        poisoned.model.embed_tokens.weight[63] = float("nan")  # only rank 1's batch at step 2 uses it
    bad = copy.deepcopy(batches)
    bad[1][ROWS // world + 2, 5] = 63
    monitor = lw.GradientMonitor(DistributedDataParallel(poisoned), warn=False, stop_on="nonfinite")
    try:
        train(monitor.module, monitor, bad, rank, world)
    except lw.TrainingStopped as stop:
        seen["stopped"] = str(stop)
    incident = monitor.incidents[-1]
    poison = bool((incident.batch["input_ids"] == 63).any())
    seen["incident"] = {"step": incident.step, "rank": incident.rank, "has_63": poison}
    replay = monitor.replay(incident)
    seen["replay_module"] = replay.stopped_at.module if replay.stopped_at else None
    monitor.detach()

    seen["trainer"] = trainer(out)

    dist.barrier()
    if rank == 0:  # the last case: a monitor on rank 0 only
        try:
            lw.GradientMonitor(tiny_llama(), sync_timeout=3)
        except lw.InputError as error:
            seen["partial"] = str(error)
    else:
        time.sleep(5)
    (out / f"rank{rank}.json").write_text(json.dumps(seen))
    dist.barrier()
    dist.destroy_process_group()


def trainer(out: Path) -> dict:
    """The Trainer (accelerate's DDP underneath) with the monitor's callback: the norms it reads and
    the gradient norm the Trainer logs (max_grad_norm=0: measured, not clipped)."""
    model = tiny_llama()
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": t, "labels": t} for t in torch.randint(0, 60, (16, LENGTH), generator=g)]
    args = transformers.TrainingArguments(
        output_dir=str(out / "trainer"),
        max_steps=3,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        max_grad_norm=0.0,
        use_cpu=True,
        disable_tqdm=True,
        ddp_backend="gloo",
        logging_steps=1,
    )
    run = transformers.Trainer(model=model, args=args, train_dataset=data)
    monitor = lw.GradientMonitor(model, warn=False)
    run.add_callback(monitor.callback)
    run.train()
    logged = [float(e["grad_norm"]) for e in run.state.log_history if "grad_norm" in e]
    monitor.detach()
    return {"norms": [s["global_norm"] for s in monitor.steps], "logged": logged}


def single_process(out: Path) -> None:
    """The same global batches in one process: the norms DDP and FSDP must reproduce."""
    model = tiny_llama()
    monitor = lw.GradientMonitor(model, warn=False)
    train(model, monitor, global_batches(), 0, 1)
    (out / "single.json").write_text(json.dumps({"norms": norms(monitor)}))


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    target = Path(sys.argv[2])
    single_process(target) if sys.argv[1] == "single" else main(target)
