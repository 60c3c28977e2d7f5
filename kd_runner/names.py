"""The names a config may use, in a module that imports nothing: kd-run checks a config (and prints its
help or a usage error) without loading torch, torchvision or scikit-learn. The modules that build these
(kd_runner.models, kd_runner.data, runtime.compute, train) import their names from here, and
tests/test_startup.py fails when a registry and its table here differ.
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
MODEL_NAMES = tuple(sorted(("cnn", "mlp", *CIFAR_NETS, *PRETRAINED_FAMILIES)))

DOWNLOADABLE = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn")  # data/vision.py's FILE_DATASETS
WITH_TEST_SPLIT = (*DOWNLOADABLE, "imagefolder", "fake")
DATASET_NAMES = tuple(sorted(("digits", "synthetic", *WITH_TEST_SPLIT)))
