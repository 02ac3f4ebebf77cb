"""Framework integrations, on real (tiny) training runs without network access.

* transformers: a real ``Trainer`` fine-tunes a tiny GPT-2 (built from a config, byte-level
  vocabulary) on standard-library docstrings with ``DeltackptCallback``.
* Lightning: a real ``lightning.Trainer`` fits a small classifier on the digits with
  ``ChainCheckpointIO``; ``ModelCheckpoint`` saves, removes and resumes through the chain.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

import deltackpt as dk

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _texts(n: int, length: int = 48) -> list[list[int]]:
    from deltackpt._realdata import _docstrings

    data = " ".join(_docstrings(40)).encode("utf-8", "replace")
    return [list(data[i * length : (i + 1) * length]) for i in range(n)]


def test_transformers_trainer_callback(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from deltackpt.integrations.hf import DeltackptCallback

    class NoFileCheckpoints(transformers.Trainer):
        """on_save still fires; the Trainer's own (pickle-based) checkpoint files are skipped."""

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            pass

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=256,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config)
    rows = [{"input_ids": torch.tensor(t), "labels": torch.tensor(t)} for t in _texts(48)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=7,
        per_device_train_batch_size=8,
        learning_rate=2e-3,
        save_strategy="steps",
        save_steps=3,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
        seed=0,
    )
    chain_path = tmp_path / "chain"
    cb = DeltackptCallback(chain_path, every_n_steps=2, bits=3, anchor_every=4)
    trainer = NoFileCheckpoints(model=model, args=args, train_dataset=rows, callbacks=[cb])
    trainer.train()
    assert cb.chain is None  # closed at on_train_end: the lock is released
    # every 2 steps, on_save at 3 and 6, and the Trainer's final save at step 7
    assert cb.saved_steps == [2, 3, 4, 6, 7]
    with dk.CheckpointChain(chain_path, mode="r") as chain:
        assert chain.steps() == [2, 3, 4, 6, 7]
        kinds = [chain.info(s)["kind"] for s in chain.steps()]
        assert kinds == ["keyframe", "step", "step", "step", "anchor"]  # anchor_every=4
        state = chain.restore(7)
        base = chain.restore(2)["model"]  # the anchor's base: the keyframe
        assert state["trainer"]["global_step"] == 7
        assert state["optimizer"]["param_groups"][0]["lr"] >= 0
        assert set(state["optimizer"]["state"]) == set(range(len(list(model.parameters()))))
        true = model.state_dict()
        assert set(state["model"]) == set(true)
        lossy = 0
        for k, u in true.items():
            err = (state["model"][k] - u).abs()
            assert bool((err <= (u - base[k]).abs() + 1e-6 * u.abs()).all()), k
            lossy += int((err > 0).sum())
        assert lossy > 0
        fresh = transformers.GPT2LMHeadModel(config)
        chain.restore_into(7, model=fresh)
        batch = torch.tensor(_texts(8))
        with torch.no_grad():
            loss_restored = float(fresh(batch, labels=batch).loss)
            loss_final = float(model(batch, labels=batch).loss)
            loss_init = float(transformers.GPT2LMHeadModel(config)(batch, labels=batch).loss)
        assert abs(loss_restored - loss_final) < 0.25 * abs(loss_init - loss_final)


def _digit_data() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:512], dtype=torch.float32) / 16.0
    y = torch.tensor(d.target[:512], dtype=torch.long)
    return x, y


def test_lightning_checkpoint_io(tmp_path: Path) -> None:
    L = pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    from torch.utils.data import DataLoader, TensorDataset

    from deltackpt.integrations.lightning_io import ChainCheckpointIO

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
            )

        def training_step(self, batch: Any, _idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    x, y = _digit_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)
    chain_path = tmp_path / "chain"
    ckpt_dir = tmp_path / "ckpts"

    def trainer(max_epochs: int, io: ChainCheckpointIO) -> Any:
        return L.Trainer(
            max_epochs=max_epochs,
            accelerator="cpu",
            devices=1,
            plugins=[io],
            callbacks=[
                L.pytorch.callbacks.ModelCheckpoint(
                    dirpath=ckpt_dir, every_n_train_steps=4, save_top_k=-1, save_last=True
                )
            ],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    torch.manual_seed(0)
    model = Classifier()
    io = ChainCheckpointIO(chain_path, bits=3, anchor_every=4)
    trainer(2, io).fit(model, loader)
    io.teardown()
    pointers = sorted(p.name for p in ckpt_dir.iterdir())
    assert "last.ckpt" in pointers and "epoch=1-step=16.ckpt" in pointers
    with dk.CheckpointChain(chain_path, mode="r") as chain:
        steps = chain.steps()
        assert steps == [4, 8, 12, 16]  # "last" and the step checkpoint share a chain step
        state = chain.restore(16)
        prev = chain.restore(12)["state_dict"]
        assert chain.info(4)["kind"] == "keyframe" and chain.info(16)["kind"] == "step"
    for k, v in model.state_dict().items():  # the LC bound against the base (step 12)
        err = (state["state_dict"][k] - v).abs()
        assert bool((err <= (v - prev[k]).abs() + 1e-6 * v.abs()).all()), k
    ckpt = io.load_checkpoint(ckpt_dir / "epoch=1-step=16.ckpt")
    assert ckpt["global_step"] == 16 and ckpt["epoch"] == 1
    assert "optimizer_states" in ckpt and "loops" in ckpt
    ((cb_state),) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    kth = cb_state["kth_value"]  # a 0-d inf tensor: stored as tagged JSON, given back as a tensor
    assert isinstance(kth, torch.Tensor) and kth.shape == () and torch.isinf(kth)

    # resume from the chain through the pointer file and train one more epoch
    resumed = Classifier()
    io2 = ChainCheckpointIO(chain_path, bits=3, anchor_every=4)
    trainer(3, io2).fit(resumed, loader, ckpt_path=str(ckpt_dir / "last.ckpt"))
    io2.teardown()
    with dk.CheckpointChain(chain_path, mode="r") as chain:
        assert chain.steps() == [4, 8, 12, 16, 20, 24]
    io.remove_checkpoint(ckpt_dir / "epoch=0-step=4.ckpt")
    assert not (ckpt_dir / "epoch=0-step=4.ckpt").exists()
