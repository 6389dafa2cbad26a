"""The fake dataset trees live in the package (each loader's example); re-exported for the tests and benchmarks."""
from faircompress.data.examples import make_ckplus, make_fer2013, make_rafdb, make_sfew, write_csv  # noqa: F401


def write_config(path, overrides: dict):
    """A study config file from dotted overrides ({"train.epochs": 2} -> train: {epochs: 2})."""
    import yaml

    cfg: dict = {}
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def torchvision_resnet18_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision's resnet18 state dict written out from its architecture, independently of ours."""
    def bn(prefix: str, c: int) -> dict:
        return {f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")} | {f"{prefix}.num_batches_tracked": ()}

    shapes = {"conv1.weight": (64, 3, 7, 7), **bn("bn1", 64)}
    cin = 64
    for stage, c in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p, first_in = f"layer{stage}.{block}", cin if block == 0 else c
            shapes |= {f"{p}.conv1.weight": (c, first_in, 3, 3), **bn(f"{p}.bn1", c), f"{p}.conv2.weight": (c, c, 3, 3), **bn(f"{p}.bn2", c)}
            if block == 0 and stage > 1:
                shapes |= {f"{p}.downsample.0.weight": (c, cin, 1, 1), **bn(f"{p}.downsample.1", c)}
        cin = c
    return shapes | {"fc.weight": (1000, 512), "fc.bias": (1000,)}


def write_imagenet_resnet18(path):
    """A torchvision-style resnet18 .pth (its names and shapes, random values), for configs that name one."""
    import torch

    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) for k, s in torchvision_resnet18_shapes().items() if not k.endswith("num_batches_tracked")}
    state |= {k: v.abs() + 0.5 for k, v in state.items() if k.endswith("running_var")}
    torch.save(state, path)
    return path
