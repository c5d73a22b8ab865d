"""The training engine: one loop (:func:`train`) that runs any :class:`Task`.

::

    task = StudentTask(...)                                  # model, batches, training_step, evaluate
    result = train(task, LoopConfig(steps=1200, lr=1e-3, eval_every=100, select="best",
                                    max_minutes=60), run_dir, device)

fit-teacher, train-head and train-student are tasks; a new training command is one more task.
"""

from dtlabel.engine.checkpoint import CheckpointStore
from dtlabel.engine.config import LoopConfig, OptimConfig
from dtlabel.engine.loop import METRICS, TrainResult, train
from dtlabel.engine.schedule import warmup_cosine
from dtlabel.engine.task import Task

__all__ = ["METRICS", "CheckpointStore", "LoopConfig", "OptimConfig", "Task", "TrainResult", "train", "warmup_cosine"]
