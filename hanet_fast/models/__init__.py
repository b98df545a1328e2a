"""DeepLabv3+ with HANet: the model zoo (DESIGN §4) and official-checkpoint loading.

```python
from hanet_fast.models import deeplabv3plus, HANetConfig
model = deeplabv3plus("resnet101_deepstem", output_stride=8, num_classes=19,
                      hanet_layers=(1, 1, 1, 1, 0), hanet=HANetConfig(reduction=32))
out = model(images, row_pos)            # SegmentationOutput(logits, aux_logits, attention)
```
"""

from hanet_fast.models.backbones import BACKBONES, OUTPUT_STRIDES, BackboneSpec, backbone_spec, build_trunk
from hanet_fast.models.deeplab import (
    ASPP,
    HANET_LAYERS,
    DeepLabConfig,
    DeepLabV3PlusHANet,
    HANetConfig,
    SegmentationOutput,
    deeplabv3plus,
)
from hanet_fast.models.timm_backbone import TIMM_PREFIX, convert_sync_batchnorm, is_timm_backbone
from hanet_fast.models.official import (
    OfficialCheckpointError,
    convert_official_state_dict,
    infer_official_config,
    load_official_checkpoint,
    to_official_state_dict,
)

__all__ = [
    "BACKBONES",
    "OUTPUT_STRIDES",
    "HANET_LAYERS",
    "BackboneSpec",
    "backbone_spec",
    "build_trunk",
    "ASPP",
    "HANetConfig",
    "DeepLabConfig",
    "DeepLabV3PlusHANet",
    "SegmentationOutput",
    "deeplabv3plus",
    "OfficialCheckpointError",
    "convert_official_state_dict",
    "infer_official_config",
    "load_official_checkpoint",
    "to_official_state_dict",
    "TIMM_PREFIX",
    "convert_sync_batchnorm",
    "is_timm_backbone",
]
