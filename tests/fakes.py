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
