"""Parameter counts of the shipped architectures and weights, so that `iabn-zoo list` answers without building 29
networks (which took seconds). tests/cli/test_list_command.py builds every name on the meta device and compares,
printing the line to change when an architecture's size changes. Names not in the table (entries from
IABN_ZOO_REGISTRY or register_weights) are counted by building them on the meta device.
"""

PARAMETER_COUNTS = {
    "densenet121": 7978728,
    "densenet169": 14149352,
    "densenet201": 20013800,
    "densenet264": 33337576,
    "densenet264_ipabn_lr_256": 33403880,
    "resnet101": 44549160,
    "resnet101_ipabn_sync_lr_512": 44549160,
    "resnet152": 60192808,
    "resnet18": 11689512,
    "resnet34": 21797672,
    "resnet34_ipabn_sync_lr_512": 21797672,
    "resnet50": 25557032,
    "resnet50_ipabn_sync_lr_512": 25557032,
    "resnext101": 42902312,
    "resnext101_ipabn_lr_512": 42902312,
    "resnext101_ipabn_sync_lr_256": 42902312,
    "resnext101_stdbn_lr_256": 42902312,
    "resnext152": 58159912,
    "resnext152_ipabn_lr_256": 58159912,
    "resnext50": 24380200,
    "wider_resnet16": 63732008,
    "wider_resnet16_a2": 63732008,
    "wider_resnet20": 82612520,
    "wider_resnet20_a2": 82612520,
    "wider_resnet38": 109167912,
    "wider_resnet38_a2": 109167912,
    "wider_resnet38_a2_deeplab3": 135827073,
    "wider_resnet38_deeplab3_vistas": 135827073,
    "wider_resnet38_ipabn_lr_256": 109167912,
}
