"""The names a config may use, in a module that imports nothing: kd-run checks a config (and prints its
help or a usage error) without loading torch, torchvision or scikit-learn. The modules that build these
(kd_runner.models, kd_runner.data, runtime.compute, train) import their names from here: the networks and
datasets are registries of builders by "module:function" path, imported only when one is built.
"""

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
SOFT_LOSSES = ("kl", "soft_ce", "mse")
METRIC_NAMES = (
    "student_acc",
    "teacher_acc",
    "student_loss",
    "objective",
    "logit_gap",
    "kl_teacher_student",
    "agreement",
)
TOP5_NAMES = ("student_acc_top5", "teacher_acc_top5")  # only when the dataset has more than 5 classes

# torchvision families (models/torchvision_nets.py): the only networks with ImageNet weights
PRETRAINED_FAMILIES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_small", "efficientnet_b0")
CIFAR_NETS = ("resnet20", "resnet56", "resnet110", "resnet8x4", "resnet32x4", "wrn_40_2", "wrn_16_2", "vgg8", "vgg13")
# every built-in network's builder, "module:function", called with name=, the input's shape, width and depth
NETWORKS = {
    "cnn": "kd_runner.models.small_nets:cnn",
    "mlp": "kd_runner.models.small_nets:mlp",
    **{name: f"kd_runner.models.cifar_nets:{name}" for name in CIFAR_NETS},
    **{name: "kd_runner.models.torchvision_nets:build" for name in PRETRAINED_FAMILIES},
}
MODEL_NAMES = tuple(sorted(NETWORKS))
SIZED_NETWORKS = ("cnn", "mlp")  # the networks `width` and `depth` shape (the others ignore them)


def network_label(name: str, model: dict) -> str:
    """A network as tables, plots and trackers name it: `teacher=timm` by its architecture (timm/resnet50d),
    which the bare name would hide; any other by its name."""
    arch = model.get("arch") if isinstance(model, dict) else None
    return f"{name}/{arch}" if name == "timm" and arch else name


DOWNLOADABLE = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn")  # data/vision.py's FILE_DATASETS
WITH_TEST_SPLIT = (*DOWNLOADABLE, "imagefolder", "fake")
# every built-in dataset's builder, "module:function", called with the typed dataset config
DATASETS = {
    "digits": "kd_runner.data.builtin:build_digits",
    "synthetic": "kd_runner.data.builtin:build_synthetic",
    **{name: "kd_runner.data.vision:build_file_dataset" for name in DOWNLOADABLE},
    "imagefolder": "kd_runner.data.vision:build_imagefolder",
    "fake": "kd_runner.data.vision:build_fake",
}
DATASET_NAMES = tuple(sorted(DATASETS))
