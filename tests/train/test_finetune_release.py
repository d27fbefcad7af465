"""After `finetune` returns, the trainer and its optimizer are gone: dropping the result frees the trained network,
and a network loaded from the RUN directory is freed like any other."""

from __future__ import annotations

import torch
from support.image_folders import write_colour_dataset
from support.references import assert_released

from iabn_zoo.factory import load_run
from iabn_zoo.train.finetune import finetune


def test_the_fine_tuned_and_the_reloaded_networks_are_freed(tmp_path):
    data = write_colour_dataset(tmp_path / "data", train=6, val=3, size=16)
    runs = iter(("warm-up", "run"))

    def fine_tune() -> list:
        result = finetune("resnet18", data, tmp_path / next(runs), epochs=1, batch_size=6, image_size=16,
                          augment="light", num_workers=0, progress=False)
        return [result, result.model]

    assert_released(fine_tune, "finetune's result", warm_up=True)

    def reload() -> list:
        model = load_run(tmp_path / "run").eval()
        with torch.no_grad():
            model(torch.randn(1, 3, 16, 16))
        return [model]

    assert_released(reload, "a network loaded from a RUN directory")
