"""``inspect`` draws a run's activations, kernels and mistakes; lr-find writes its curve."""

import torch

from cnnlab.inspect import inspect_run, layer_activations, pick_examples
from cnnlab.models import create
from cnnlab.train.config import TrainConfig

PNG = b"\x89PNG\r\n\x1a\n"


def test_first_and_second_layer_activations_are_after_the_activation_function():
    model = create("lenet").eval()
    x = torch.rand(2, 1, 28, 28)
    first, second = layer_activations(model, x)
    with torch.no_grad():
        assert torch.equal(first, model[:2](x))   # conv1 + sigmoid: (2, 6, 28, 28)
        assert torch.equal(second, model[:5](x))  # ... conv2 + sigmoid: (2, 16, 10, 10)
    assert first.shape == (2, 6, 28, 28) and second.shape == (2, 16, 10, 10)


def test_pick_examples_finds_the_first_image_of_each_class():
    labels = torch.tensor([0, 4, 2, 4, 2])
    assert pick_examples(labels, ["a", "b", "pullover", "d", "coat"], ["pullover", "coat"]) == [2, 1]
    assert pick_examples(labels, ["a", "b", "pullover", "d", "coat"], ["4"]) == [1]


def test_inspect_and_lr_find_write_their_images(fashion_subset, tmp_path):
    from cnnlab.lrfind import lr_range_test, write_lr_find
    from cnnlab.train.run import train

    config = TrainConfig(data_dir=str(fashion_subset), verify=False, train_limit=64, test_limit=64, batch_size=32, epochs=1)
    train(config, run_dir=tmp_path / "run", progress=False)
    paths = inspect_run(tmp_path / "run", test_limit=64)
    assert set(paths) == {"activations", "kernels", "misclassified"}
    for path in paths.values():
        assert path.parent == tmp_path / "run" / "inspect" and path.read_bytes()[:8] == PNG
    result = lr_range_test(config, num_steps=8)
    assert len(result.lrs) == len(result.losses) >= 3 and result.lrs == sorted(result.lrs)
    write_lr_find(result, tmp_path / "lr")
    assert (tmp_path / "lr" / "lr_find.png").read_bytes()[:8] == PNG
    assert (tmp_path / "lr" / "lr_find.csv").read_text().startswith("lr,loss\n")
