from pare.training.hooks import Hook, TrainState
from pare.training.loop import History, batches, fit, loss_and_accuracy
from pare.training.lr_find import lr_find

__all__ = ["Hook", "TrainState", "History", "fit", "batches", "loss_and_accuracy", "lr_find"]
