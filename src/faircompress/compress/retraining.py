"""A pruned model's retraining recorded as Dixit et al. plot it (their Figs. 1-3): the TEST accuracy
after every retraining epoch beside the unpruned model's, the best of them and its epoch, the
selected epoch's, and the first epoch reaching the unpruned accuracy. Shared by the lottery ticket
(`lottery.py`) and distinctiveness pruning with its percentile control (`distinctiveness.py`).

The test accuracy is only recorded: the retraining still selects its epoch on the selection split,
as every fine-tuning does."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .recipes import TuneContext


def first_reaching(accuracies: list[float | None], target: float) -> int | None:
    """The first epoch (from 1) whose accuracy is at least ``target``; None when none is."""
    return next((i + 1 for i, a in enumerate(accuracies) if a is not None and a >= target), None)


def summarise(test_accs: list[float], unpruned: float | None, selected: int | None) -> dict[str, Any]:
    """The paper's figures of a retraining: the best test accuracy and its epoch, the selected epoch's
    test accuracy, and the first epoch reaching the unpruned accuracy."""
    if not test_accs:
        return {"best_test_acc": None, "best_test_epoch": None, "selected_epoch": selected, "selected_test_acc": None,
                "reaches_unpruned_epoch": None}
    best = max(range(len(test_accs)), key=lambda i: (test_accs[i], -i))
    return {"best_test_acc": test_accs[best], "best_test_epoch": best + 1, "selected_epoch": selected,
            "selected_test_acc": test_accs[selected - 1] if selected and selected <= len(test_accs) else None,
            "reaches_unpruned_epoch": first_reaching(test_accs, unpruned) if unpruned is not None else None}


def accuracy_on_test(ctx: TuneContext) -> Callable[[nn.Module], float] | None:
    """A model's accuracy on the study's test split, where the context gives accuracies (else None)."""
    accuracy = ctx.accuracy
    return None if accuracy is None else (lambda m: accuracy(m, "test"))


def retrain_recorded(model: nn.Module, ctx: TuneContext, epochs: int, after_step: Callable[[int], None],
                     unpruned: float | None) -> dict[str, Any]:
    """Retrain ``model`` (pruned, in place) for ``epochs`` with ``after_step`` holding its mask, and
    what the run's details keep of it: ``epochs``, ``unpruned_test_acc`` (given: measured before
    pruning), ``start_test_acc`` (now, pruned, before retraining), ``per_epoch`` (training, selection
    and test accuracy of each epoch) and `summarise`'s fields. Without test accuracies in the context
    the test fields are None and the retraining is the same."""
    test_acc = accuracy_on_test(ctx)
    start = test_acc(model) if test_acc else None
    per_epoch: list[float] = []
    if test_acc:
        res = ctx.fine_tune(model, epochs, after_step, on_epoch=lambda log: per_epoch.append(test_acc(model)))
    else:
        res = ctx.fine_tune(model, epochs, after_step)
    history = list(getattr(res, "history", []) or [])
    record: dict[str, Any] = {"epochs": epochs, "unpruned_test_acc": unpruned, "start_test_acc": start, "per_epoch": [
        {"epoch": i + 1, "train_acc": h.train_acc, "sel_acc": h.sel_acc, "test_acc": per_epoch[i] if i < len(per_epoch) else None}
        for i, h in enumerate(history)]}
    return record | summarise(per_epoch, unpruned, getattr(res, "best_epoch", None))


def retraining_note(record: dict[str, Any]) -> str:
    """'; best test accuracy ... at epoch ..., unpruned ..., first reached at epoch ...' (empty
    without test accuracies)."""
    unpruned, reached = record.get("unpruned_test_acc"), record.get("reaches_unpruned_epoch")
    if unpruned is None or record.get("best_test_acc") is None:
        return ""
    return (f"; best test accuracy {record['best_test_acc']:.1%} at epoch {record['best_test_epoch']}, unpruned {unpruned:.1%}, "
            + (f"first reached at epoch {reached}" if reached else "never reached"))
