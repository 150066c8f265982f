"""The run layer's progress bar (``lotto_jax.runs.progress``), fed by fit's callback.

Truths: hand-written records and the numbers they must show (a step count, a mean
loss and a mean accuracy worked out by hand), read back from the rich task.
"""

from __future__ import annotations

import io

import jax

from lotto_jax import data, masks, models, train
from lotto_jax.runs.progress import ProgressBar
from lotto_jax.train import EvalRecord


def _bar(done: int = 0) -> ProgressBar:
    return ProgressBar("train", total=40, done=done, enabled=True)


def test_bar_shows_step_mean_loss_and_accuracy_of_replicates():
    bar = _bar()
    with bar:
        bar.update(EvalRecord(0, None, None, None, 2.3, 0.1, 0.1))  # before training
        assert bar._p.tasks[0].completed == 0
        # two replicates: mean loss (0.5 + 0.25) / 2, mean accuracy (0.8 + 0.9) / 2
        bar.update(EvalRecord(20, [0.5, 0.25], None, None, [1.0, 1.0], [0.8, 0.9], 0.1))
    task = bar._p.tasks[0]
    assert (task.completed, task.total) == (20, 40)
    assert task.fields["info"] == "loss 0.3750  test acc 85.00%"


def test_a_resumed_bar_starts_part_way():
    bar = _bar(done=30)
    assert bar._p.tasks[0].completed == 30 and bar.completed == 30


def test_disabled_bar_draws_nothing_but_tracks_the_step(capsys):
    bar = ProgressBar("train", total=40, done=0, enabled=False)
    with bar:
        bar.update(EvalRecord(10, 0.5, None, None, 0.6, 0.8, 0.1))
    assert bar.completed == 10 and not hasattr(bar, "_p")
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_default_follows_the_terminal(monkeypatch):
    class Stream(io.StringIO):
        def __init__(self, tty):
            super().__init__()
            self.tty = tty

        def isatty(self):
            return self.tty

    for tty in (False, True):
        monkeypatch.setattr("sys.stderr", Stream(tty))
        assert ProgressBar("x", total=1, done=0).enabled is tty


def test_fit_prints_nothing(capsys):
    """The algorithm layer is silent: a fit writes nothing to stdout or stderr."""
    ds = data.load("mnist1d", validation=0)
    module = models.build("mlp", features=(8,))
    v = models.init(module, jax.random.key(0), ds.input_shape)
    cfg = train.TrainConfig(steps=4, batch_size=32, eval_every=2)
    trainer = train.make_trainer(train.classifier(module), cfg, num_train=len(ds.train))
    seen = []
    train.fit(trainer, trainer.init(v["params"]), masks.init(v["params"]), ds,
              data_key=jax.random.key(1), callback=lambda st, rec: seen.append(rec.step))
    assert seen == [0, 2, 4]
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
