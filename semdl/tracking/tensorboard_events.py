"""logger=tensorboard: TensorBoard event files in <run_dir>/tensorboard/ (`tensorboard --logdir <run or sweep dir>`).

TensorBoard stores each number as float32 (its scalar format has no other precision its viewer reads), so a value
there is the float32 nearest the one in metrics.jsonl: about 7 significant digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from semdl.io.run_directory import TENSORBOARD
from semdl.tracking.base import LOGGERS, PlainConfig, Resumption, ScalarTracker, as_text, require

FOLDER = TENSORBOARD
HEADLINE = ("network/dR", "network/consensus_residual")  # the metrics the HParams dashboard shows beside the config


@LOGGERS.register("tensorboard", PlainConfig)
class TensorBoardEvents(ScalarTracker):
    """Scalars tagged as `network/dR`, `node0/loss`, `eval/knn/mean`, ... by round; the resolved config in the
    HParams dashboard; the figures as images at the last round."""

    @classmethod
    def check(cls, settings: Any) -> None:
        require("tensorboard", "TensorBoard", ("tensorboard", "torch.utils.tensorboard"))

    def start(self, hyperparameters: dict[str, Any], run_id: str, resumed: Resumption | None) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # A resumed run redoes the rounds after its checkpoint: purge_step tells TensorBoard to hide every event of a
        # later round that the interrupted process had written, so each round is shown once, with the values that
        # metrics.jsonl keeps.
        self.writer = SummaryWriter(self.run_dir / FOLDER, purge_step=resumed.round + 1 if resumed else None)
        # Numbers stay numbers, so that the HParams dashboard can sort and filter runs by them.
        values = {
            key: value if isinstance(value, (int, float)) else as_text(value) for key, value in hyperparameters.items()
        }
        classifiers = hyperparameters.get("eval.classifiers") or []
        metrics = [*HEADLINE, *(f"eval/{name}/mean" for name in classifiers)]
        experiment, session_start, _ = hparams({"run_id": run_id, **values}, dict.fromkeys(metrics, 0.0))
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(session_start)
        self.writer.flush()

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a dashboard follows the run round by round

    def log_figures(self, round_index: int, paths: list[Path]) -> None:
        import numpy as np
        from PIL import Image

        for path in paths:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(f"figures/{path.stem}", pixels, round_index, dataformats="HWC")
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()
