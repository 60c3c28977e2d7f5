"""The config group options that need no file, made from the registries of kd_runner.names: a built-in
network or dataset without a file in conf/teacher/, conf/student/ or conf/dataset/ is the plain node
`{name: NAME}`, and every dataset is a transfer set (`transfer=NAME`). The CLI passes Hydra's ConfigStore,
so only the CLI knows Hydra; conf/ keeps files for the options that state something.
"""

from importlib.resources import files

from kd_runner.names import DATASET_NAMES, MODEL_NAMES

CONF = files("kd_runner.conf")
REGISTRIES = {"teacher": MODEL_NAMES, "student": MODEL_NAMES, "dataset": DATASET_NAMES}


def register_groups(store) -> None:
    """Store the plain options of `REGISTRIES` and the transfer sets in `store` (Hydra's ConfigStore)."""
    for group, names in REGISTRIES.items():
        for name in names:
            if not CONF.joinpath(group, f"{name}.yaml").is_file():
                store.store(group=group, name=name, node={"name": name})
    for name in DATASET_NAMES:
        store.store(group="transfer", name=name, node={"defaults": [{"/dataset@dataset": name}]})
