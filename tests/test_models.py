"""Tests of the DeepLabv3+ / HANet model zoo (hanet_fast.models, DESIGN §4) and of loading official
HANet checkpoints.

The official network (``DeepV3PlusHANet`` of github.com/shachoi/HANet ``network/deepv3.py``, with
``HANet_Conv``, ``PosEncoding1D`` / ``PosEmbedding1D`` and ``Resnet.py``'s deep-stem ResNet-101)
could not be downloaded here; ``Official*`` below rebuild it in plain PyTorch from knowledge of
that code: its module and parameter names, its layer split of the torchvision trunks, its
dilation rules and its forward pass, position maps included. It is the oracle of the
checkpoint tests and is written independently of hanet_fast's implementation (torchvision,
``nn.AdaptiveAvgPool2d`` and ``F.interpolate`` only). ``OFFICIAL_KEYS`` spells out a sample of
the official key names and shapes so the oracle itself is pinned down.
"""

from __future__ import annotations

import dataclasses
import math
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm
from torchvision.models.resnet import Bottleneck

import hanet_fast.models as hm
from hanet_fast.models import (
    BACKBONES,
    DeepLabConfig,
    HANetConfig,
    OfficialCheckpointError,
    convert_official_state_dict,
    deeplabv3plus,
    infer_official_config,
    load_official_checkpoint,
    to_official_state_dict,
)
from hanet_fast.models.summary import PAPER_TABLE2, model_cost
from hanet_fast.models.summary import main as summary_main

pytestmark = pytest.mark.usefixtures("one_thread", "quiet_fallback_warning")


def _down(n: int, times: int) -> int:
    """Size after ``times`` stride-2 stages (3x3/7x7 convs and 3x3 max pools with 'same' padding)."""
    for _ in range(times):
        n = (n + 1) // 2
    return n


def _row_pos(batch: int, height: int, top: int = 0, full: int | None = None) -> torch.Tensor:
    full = full or height
    return ((top + torch.arange(height, dtype=torch.float32)) / full).expand(batch, height).contiguous()


def _randomize_bn(module: nn.Module, seed: int) -> None:
    """Random BN statistics and affine parameters, so that every BN matters in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


# ============================================================================ official network (oracle)
def official_sinusoid_table(n_position: int, d_hid: int) -> torch.Tensor:
    """``network/PosEmbedding.py: get_sinusoid_encoding_table`` (a FloatTensor), as PosEncoding1D uses it (+1)."""
    cycle = 10 if d_hid > 50 else 100
    table = np.array([[p / np.power(cycle, 2 * (j // 2) / d_hid) for j in range(d_hid)] for p in range(n_position)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.FloatTensor(table) + 1


class OfficialPosEncoding1D(nn.Module):
    def __init__(self, pos_rfactor, dim, pos_noise=0.0, learned=False):
        super().__init__()
        self.sel_index = torch.tensor([0])
        if learned:  # PosEmbedding1D
            self.pos_layer = nn.Embedding((128 // pos_rfactor) + 1, dim)
        else:
            table = official_sinusoid_table((128 // pos_rfactor) + 1, dim)
            self.pos_layer = nn.Embedding.from_pretrained(embeddings=table, freeze=True)
        self.pos_rfactor = pos_rfactor

    def forward(self, x, pos):
        pos_h, _ = pos  # B x H x W, image rows // 8 of a 1024-row image (0..127)
        pos_h = pos_h // self.pos_rfactor
        pos_h = pos_h.index_select(2, self.sel_index).unsqueeze(1).squeeze(3)  # B x 1 x H
        pos_h = F.interpolate(pos_h.float(), size=x.shape[2], mode="nearest").long()  # B x 1 x rows
        pos_h = self.pos_layer(pos_h).transpose(1, 3).squeeze(3)  # B x dim x rows
        return x + pos_h


class OfficialHANetConv(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size=3, r_factor=64, layer=3, pos_injection=2, is_encoding=1,
                 pos_rfactor=8, pooling="mean", dropout_prob=0.0, pos_noise=0.0):
        super().__init__()
        self.pooling, self.pos_injection, self.layer, self.dropout_prob = pooling, pos_injection, layer, dropout_prob
        mid_1_channel = math.ceil(in_channel / r_factor)
        if dropout_prob > 0:
            self.dropout = nn.Dropout1d(dropout_prob)  # official: Dropout2d on a 3-D tensor (identity in eval)
        self.attention_first = nn.Sequential(
            nn.Conv1d(in_channel, mid_1_channel, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm1d(mid_1_channel), nn.ReLU(inplace=True))
        if layer == 2:
            self.attention_second = nn.Sequential(
                nn.Conv1d(mid_1_channel, out_channel, kernel_size=kernel_size, stride=1, padding=kernel_size // 2,
                          bias=True))
        else:
            mid_2_channel = mid_1_channel * 2
            self.attention_second = nn.Sequential(
                nn.Conv1d(mid_1_channel, mid_2_channel, kernel_size=3, stride=1, padding=1, bias=True),
                nn.BatchNorm1d(mid_2_channel), nn.ReLU(inplace=True))
            self.attention_third = nn.Sequential(
                nn.Conv1d(mid_2_channel, out_channel, kernel_size=kernel_size, stride=1, padding=kernel_size // 2,
                          bias=True))
        if pooling == "mean":
            self.rowpool = nn.AdaptiveAvgPool2d((128 // pos_rfactor, 1))
        else:
            self.rowpool = nn.AdaptiveMaxPool2d((128 // pos_rfactor, 1))
        if pos_rfactor > 0 and pos_injection in (1, 2):
            dim = in_channel if pos_injection == 1 else mid_1_channel
            emb = OfficialPosEncoding1D(pos_rfactor, dim, pos_noise, learned=is_encoding == 0)
            setattr(self, "pos_emb1d_1st" if pos_injection == 1 else "pos_emb1d_2nd", emb)

    def forward(self, x, out, pos=None):
        H = out.size(2)
        x1d = self.rowpool(x).squeeze(3)
        if pos is not None and self.pos_injection == 1:
            x1d = self.pos_emb1d_1st(x1d, pos)
        if self.dropout_prob > 0:
            x1d = self.dropout(x1d)
        x1d = self.attention_first(x1d)
        if pos is not None and self.pos_injection == 2:
            x1d = self.pos_emb1d_2nd(x1d, pos)
        x1d = self.attention_second(x1d)
        if self.layer == 3:
            x1d = self.attention_third(x1d)
        x1d = torch.sigmoid(x1d)
        x1d = F.interpolate(x1d, size=H, mode="linear")
        return torch.mul(out, x1d.unsqueeze(3))


def official_upsample(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class OfficialASPP(nn.Module):
    def __init__(self, in_dim, reduction_dim=256, output_stride=16, rates=(6, 12, 18)):
        super().__init__()
        if output_stride == 8:
            rates = [2 * r for r in rates]
        elif output_stride == 4:
            rates = [4 * r for r in rates]
        elif output_stride == 32:
            rates = [r // 2 for r in rates]
        features = [nn.Sequential(nn.Conv2d(in_dim, reduction_dim, kernel_size=1, bias=False),
                                  nn.BatchNorm2d(reduction_dim), nn.ReLU(inplace=True))]
        for r in rates:
            features.append(nn.Sequential(nn.Conv2d(in_dim, reduction_dim, kernel_size=3, dilation=r, padding=r, bias=False),
                                          nn.BatchNorm2d(reduction_dim), nn.ReLU(inplace=True)))
        self.features = nn.ModuleList(features)
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = nn.Sequential(nn.Conv2d(in_dim, 256, kernel_size=1, bias=False), nn.BatchNorm2d(256),
                                      nn.ReLU(inplace=True))

    def forward(self, x):
        out = official_upsample(self.img_conv(self.img_pooling(x)), x.size()[2:])
        for f in self.features:
            out = torch.cat((out, f(x)), 1)
        return out


class OfficialResNet3X3(nn.Module):
    """``network/Resnet.py``'s deep-stem ResNet (only what deepv3.py uses)."""

    def __init__(self, layers=(3, 4, 23, 3)):
        super().__init__()
        self.inplanes = 128
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu3 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


OFFICIAL_TRUNKS = {  # official trunk name -> hanet_fast backbone
    "resnet-50": "resnet50",
    "resnet-101": "resnet101_deepstem",
    "resnet-152": "resnet152",
    "resnext-50": "resnext50_32x4d",
    "resnext-101": "resnext101_32x8d",
    "wide_resnet-50": "wide_resnet50_2",
    "wide_resnet-101": "wide_resnet101_2",
    "shufflenetv2": "shufflenet_v2_x1_0",
    "mobilenetv2": "mobilenet_v2",
    "mnasnet_05": "mnasnet0_5",
    "mnasnet_10": "mnasnet1_0",
}


class OfficialDeepV3PlusHANet(nn.Module):
    """``network/deepv3.py: DeepV3PlusHANet`` (criterions and argparse replaced by arguments)."""

    def __init__(self, num_classes, trunk="resnet-101", variant="D", hanet=(1, 1, 1, 1, 0), hanet_set=(3, 64, 3),
                 hanet_pos=(2, 1), pos_rfactor=8, pooling="mean", dropout=0.1, pos_noise=0.5, aux_loss=True):
        super().__init__()
        self.hanet = hanet
        if trunk == "shufflenetv2":
            channel_3rd, prev_final_channel, final_channel = 116, 464, 1024
            resnet = tvm.shufflenet_v2_x1_0()
            self.layer0 = nn.Sequential(resnet.conv1, resnet.maxpool)
            self.layer1, self.layer2, self.layer3, self.layer4 = resnet.stage2, resnet.stage3, resnet.stage4, resnet.conv5
        elif trunk == "mobilenetv2":
            channel_3rd, prev_final_channel, final_channel = 32, 320, 1280
            f = tvm.mobilenet_v2().features
            self.layer0 = nn.Sequential(f[0], f[1])
            self.layer1 = nn.Sequential(f[2], f[3], f[4], f[5], f[6])
            self.layer2 = nn.Sequential(f[7], f[8], f[9], f[10])
            self.layer3 = nn.Sequential(f[11], f[12], f[13], f[14], f[15], f[16], f[17])
            self.layer4 = nn.Sequential(f[18])
        elif trunk in ("mnasnet_05", "mnasnet_10"):
            if trunk == "mnasnet_05":
                channel_3rd, prev_final_channel, final_channel = 24, 160, 1280
                m = tvm.mnasnet0_5().layers
            else:
                channel_3rd, prev_final_channel, final_channel = 40, 320, 1280
                m = tvm.mnasnet1_0().layers
            self.layer0 = nn.Sequential(m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7])
            self.layer1 = nn.Sequential(m[8], m[9])
            self.layer2 = nn.Sequential(m[10], m[11])
            self.layer3 = nn.Sequential(m[12], m[13])
            self.layer4 = nn.Sequential(m[14], m[15], m[16])
        else:
            channel_3rd, prev_final_channel, final_channel = 256, 1024, 2048
            if trunk == "resnet-101":
                resnet = OfficialResNet3X3()
                resnet.layer0 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu1, resnet.conv2, resnet.bn2,
                                              resnet.relu2, resnet.conv3, resnet.bn3, resnet.relu3, resnet.maxpool)
            else:
                # Resnet.py's resnet50 / resnet152 are torchvision's structure and names
                resnet = {"resnet-50": tvm.resnet50, "resnet-152": tvm.resnet152, "resnext-50": tvm.resnext50_32x4d,
                          "resnext-101": tvm.resnext101_32x8d, "wide_resnet-50": tvm.wide_resnet50_2,
                          "wide_resnet-101": tvm.wide_resnet101_2}[trunk]()
                resnet.layer0 = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
            self.layer0 = resnet.layer0
            self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        if trunk in ("shufflenetv2", "mobilenetv2", "mnasnet_05", "mnasnet_10"):
            def dilate(layer, d):
                for m in layer.modules():
                    if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                        m.dilation, m.padding, m.stride = (d, d), (d, d), (1, 1)
            if variant == "D":
                dilate(self.layer2, 2)
                dilate(self.layer3, 4)
            elif variant == "D16":
                dilate(self.layer3, 2)
        else:
            def dilate(layer, d):
                for n, m in layer.named_modules():
                    if "conv2" in n:
                        m.dilation, m.padding, m.stride = (d, d), (d, d), (1, 1)
                    elif "downsample.0" in n:
                        m.stride = (1, 1)
            if variant == "D":
                dilate(self.layer3, 2)
                dilate(self.layer4, 4)
            elif variant == "D4":
                dilate(self.layer2, 2)
                dilate(self.layer3, 4)
                dilate(self.layer4, 8)
            elif variant == "D16":
                dilate(self.layer4, 2)
        os_ = {"D": 8, "D4": 4, "D16": 16}.get(variant, 32)
        self.aspp = OfficialASPP(final_channel, 256, output_stride=os_)
        self.bot_fine = nn.Sequential(nn.Conv2d(channel_3rd, 48, kernel_size=1, bias=False), nn.BatchNorm2d(48),
                                      nn.ReLU(inplace=True))
        self.bot_aspp = nn.Sequential(nn.Conv2d(1280, 256, kernel_size=1, bias=False), nn.BatchNorm2d(256),
                                      nn.ReLU(inplace=True))
        self.final1 = nn.Sequential(
            nn.Conv2d(304, 256, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True))
        self.final2 = nn.Sequential(nn.Conv2d(256, num_classes, kernel_size=1, bias=True))
        if aux_loss:
            self.dsn = nn.Sequential(
                nn.Conv2d(prev_final_channel, 512, kernel_size=3, stride=1, padding=1), nn.BatchNorm2d(512),
                nn.ReLU(inplace=True), nn.Dropout2d(0.1),
                nn.Conv2d(512, num_classes, kernel_size=1, stride=1, padding=0, bias=True))
        channels = [(prev_final_channel, final_channel), (final_channel, 1280), (1280, 256), (304, 256),
                    (256, num_classes)]
        for k, (cin, cout) in enumerate(channels):
            if hanet[k] == 1:
                setattr(self, f"hanet{k}", OfficialHANetConv(
                    cin, cout, hanet_set[0], hanet_set[1], hanet_set[2], hanet_pos[0], hanet_pos[1],
                    pos_rfactor=pos_rfactor, pooling="max" if k == 4 else pooling, dropout_prob=dropout,
                    pos_noise=pos_noise))

    def forward(self, x, pos=None):
        x_size = x.size()
        x = self.layer0(x)
        x = self.layer1(x)
        low_level = x
        x = self.layer2(x)
        x = self.layer3(x)
        aux_out = x
        x = self.layer4(x)
        if self.hanet[0] == 1:
            x = self.hanet0(aux_out, x, pos)
        represent = x
        x = self.aspp(x)
        if self.hanet[1] == 1:
            x = self.hanet1(represent, x, pos)
        dec0_up = self.bot_aspp(x)
        if self.hanet[2] == 1:
            dec0_up = self.hanet2(x, dec0_up, pos)
        dec0_fine = self.bot_fine(low_level)
        dec0_up = official_upsample(dec0_up, low_level.size()[2:])
        dec0 = torch.cat([dec0_fine, dec0_up], 1)
        dec1 = self.final1(dec0)
        if self.hanet[3] == 1:
            dec1 = self.hanet3(dec0, dec1, pos)
        dec2 = self.final2(dec1)
        if self.hanet[4] == 1:
            dec2 = self.hanet4(dec1, dec2, pos)
        return official_upsample(dec2, x_size[2:])


def official_pos(batch: int, height: int, width: int, top: int = 0, full: int | None = None):
    """The official dataset's position maps, cropped: ``pos_h`` = full-image row * 128 // full height
    (``arange(1024) // 8`` on Cityscapes), ``pos_w`` likewise over the columns."""
    full = full or height
    rows = (top + torch.arange(height)) * 128 // full
    pos_h = rows[None, :, None].expand(batch, height, width).contiguous()
    pos_w = (torch.arange(width) * 128 // width)[None, None, :].expand(batch, height, width).contiguous()
    return pos_h, pos_w


#: A sample of the official names and shapes (ResNet-101 deep stem, OS 8, 19 classes, HANet L1-L4
#: with --hanet_set 3 64 3 --hanet_pos 2 1 --pos_rfactor 8, --aux_loss), as saved by DDP.
OFFICIAL_KEYS = {
    "module.layer0.0.weight": (64, 3, 3, 3),
    "module.layer0.1.running_var": (64,),
    "module.layer0.3.weight": (64, 64, 3, 3),
    "module.layer0.6.weight": (128, 64, 3, 3),
    "module.layer0.7.num_batches_tracked": (),
    "module.layer1.0.conv1.weight": (64, 128, 1, 1),
    "module.layer1.0.downsample.0.weight": (256, 128, 1, 1),
    "module.layer3.22.conv3.weight": (1024, 256, 1, 1),
    "module.layer4.2.bn3.bias": (2048,),
    "module.aspp.features.0.0.weight": (256, 2048, 1, 1),
    "module.aspp.features.3.0.weight": (256, 2048, 3, 3),
    "module.aspp.features.3.1.running_mean": (256,),
    "module.aspp.img_conv.0.weight": (256, 2048, 1, 1),
    "module.bot_fine.0.weight": (48, 256, 1, 1),
    "module.bot_aspp.0.weight": (256, 1280, 1, 1),
    "module.final1.0.weight": (256, 304, 3, 3),
    "module.final1.4.weight": (256,),
    "module.final2.0.bias": (19,),
    "module.dsn.0.bias": (512,),
    "module.dsn.4.weight": (19, 512, 1, 1),
    "module.hanet0.attention_first.0.weight": (16, 1024, 1),
    "module.hanet0.attention_first.1.running_mean": (16,),
    "module.hanet0.attention_second.0.weight": (32, 16, 3),
    "module.hanet0.attention_second.1.weight": (32,),
    "module.hanet0.attention_third.0.weight": (2048, 32, 3),
    "module.hanet0.pos_emb1d_2nd.pos_layer.weight": (17, 16),
    "module.hanet1.attention_third.0.bias": (1280,),
    "module.hanet2.attention_first.0.weight": (20, 1280, 1),
    "module.hanet3.attention_first.0.weight": (5, 304, 1),
    "module.hanet3.pos_emb1d_2nd.pos_layer.weight": (17, 5),
}


def _official_meta(trunk: str, **kwargs) -> OfficialDeepV3PlusHANet:
    with torch.device("meta"):
        return OfficialDeepV3PlusHANet(19, trunk, **kwargs)


def test_official_fixture_naming():
    """The oracle's names and shapes are the official ones listed in OFFICIAL_KEYS."""
    net = _official_meta("resnet-101", hanet_set=(3, 64, 3))
    state = {f"module.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
    for key, shape in OFFICIAL_KEYS.items():
        assert state.get(key) == shape, key
    assert not any(k.startswith("module.hanet4") for k in state)


# ============================================================================ every backbone x output stride
# Every backbone at 8/16/32; output stride 4 (ResNet family only) once.
# The larger ResNet variants share ResNet-50/101's stride code (torchvision's ResNet with other
# widths, groups or depths): one stride each, all three for the rest.
_ONE_STRIDE = ("resnet152", "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2")
STRIDE_CASES = ([(b, os_) for b in BACKBONES for os_ in ((8,) if b in _ONE_STRIDE else (8, 16, 32))]
                + [("resnet50", 4)])
# MNASNet's strided 5x5 depthwise convolutions, dilated with padding = dilation as the official
# code does, shrink stage 3 by this many rows and columns (at stride 8 / 16).
MNASNET_SHRINK = {8: 12, 16: 4, 32: 0}


@pytest.mark.parametrize("backbone,output_stride", STRIDE_CASES)
def test_backbone_output_stride_forward_backward(backbone, output_stride):
    torch.manual_seed(0)
    model = deeplabv3plus(backbone, output_stride, num_classes=3, hanet_layers=(1, 1, 1, 1, 1)).train()
    spec = model.spec
    assert model.aspp.rates == tuple(r * 16 // output_stride for r in (6, 12, 18))
    shapes = {}
    for name in ("layer1", "layer3", "layer4"):
        getattr(model, name).register_forward_hook(lambda m, a, out, name=name: shapes.__setitem__(name, out.shape))
    mnasnet = backbone.startswith("mnasnet")
    H, W = (129, 135) if mnasnet else (33, 41)
    images = torch.randn(2, 3, H, W)
    out = model(images, _row_pos(2, H, top=5, full=2 * H), return_attention=True)
    halvings = {4: 2, 8: 3, 16: 4, 32: 5}[output_stride]
    stage3 = halvings if spec.family == "mobile" else min(halvings, 4)
    shrink = MNASNET_SHRINK[output_stride] if mnasnet else 0
    low = int(math.log2(spec.low_stride))
    assert shapes["layer1"] == (2, spec.low_channels, _down(H, low), _down(W, low))
    assert shapes["layer3"] == (2, spec.aux_channels, _down(H, stage3) - shrink, _down(W, stage3) - shrink)
    assert shapes["layer4"] == (2, spec.out_channels, _down(H, halvings) - shrink, _down(W, halvings) - shrink)
    assert out.logits.shape == (2, 3, H, W)
    assert out.aux_logits.shape == (2, 3, _down(H, stage3) - shrink, _down(W, stage3) - shrink)
    assert set(out.attention) == {"L1", "L2", "L3", "L4", "L5"}
    (out.logits.square().mean() + out.aux_logits.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.hanet4.parameters())


# ============================================================================ attention, layers, row positions
def _small(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("num_classes", 5)
    return deeplabv3plus(kwargs.pop("backbone", "mobilenet_v2"), kwargs.pop("output_stride", 16), **kwargs)


def test_attention_maps_shapes_and_per_layer_configs():
    configs = [HANetConfig(rows=8), None, HANetConfig(rows=16, num_convs=2, kernel_size=5, pos_injection=1),
               None, HANetConfig(rows=4, pooling="max", pos_encoding="learned")]
    model = _small(hanet_layers=(1, 0, 1, 0, 1), hanet=configs).eval()
    out = model(torch.randn(2, 3, 64, 48), return_attention=True)
    assert set(out.attention) == {"L1", "L3", "L5"}
    assert out.attention["L1"].shape == (2, 1280, 8)
    assert out.attention["L3"].shape == (2, 256, 16)
    assert out.attention["L5"].shape == (2, 5, 4)
    for attn in out.attention.values():
        assert ((attn > 0) & (attn < 1)).all()
    assert model.hanet2.conv3 is None and model.hanet2.pos_injection == 1
    assert model.hanet4.pooling == "max" and model.hanet4.pos_encoding.kind == "learned"
    assert model(torch.randn(1, 3, 64, 48)).attention is None
    # a single config: L1-L4 as given, L5 with max pooling
    model = _small(hanet_layers=(1, 1, 1, 1, 1), hanet=HANetConfig(reduction=16))
    assert [m.pooling for m in model.hanet_modules.values()] == ["avg"] * 4 + ["max"]
    assert model.hanet0.mid_channels == math.ceil(320 / 16)
    assert model.config.hanet[4] == HANetConfig(reduction=16, pooling="max")


@pytest.mark.parametrize("k", range(5))
def test_hanet_switch_changes_exactly_its_module(k):
    with torch.device("meta"):
        off = deeplabv3plus("shufflenet_v2_x1_0", 16, hanet_layers=(0,) * 5).state_dict()
        flags = [0] * 5
        flags[k] = 1
        on = deeplabv3plus("shufflenet_v2_x1_0", 16, hanet_layers=flags).state_dict()
    added = set(on) - set(off)
    assert set(off) <= set(on)
    assert added and all(key.startswith(f"hanet{k}.") for key in added)
    assert all(on[key].shape == off[key].shape for key in off)


def test_param_groups_split_hanet():
    model = _small(hanet_layers=(1, 1, 0, 0, 0))
    main, hanet = model.param_groups(5e-4, 1e-4)
    assert (main["weight_decay"], hanet["weight_decay"]) == (5e-4, 1e-4)
    n_hanet = sum(p.numel() for m in (model.hanet0, model.hanet1) for p in m.parameters())
    assert sum(p.numel() for p in hanet["params"]) == n_hanet
    assert len(main["params"]) + len(hanet["params"]) == len(list(model.parameters()))


def test_row_pos():
    model = _small(output_stride=8, hanet_layers=(1, 1, 1, 1, 1)).eval()
    _randomize_bn(model, 1)
    images = torch.randn(2, 3, 128, 40)
    with torch.no_grad():
        full = model(images).logits
        # a full image: same positions as None when every x_low height is a multiple of rows
        assert torch.equal(model(images, _row_pos(2, 128)).logits, full)
        crop = model(images, _row_pos(2, 128, top=200, full=512)).logits
    assert not torch.allclose(crop, full)
    # each layer gets the image-level positions themselves (the module resizes them straight to its rows)
    seen = {}
    for k, m in enumerate(model.hanet_modules.values()):
        m.register_forward_pre_hook(lambda mod, args, k=k: seen.__setitem__(k, (args[0].shape[2], args[2])))
    row_pos = _row_pos(2, 128, top=200, full=512)
    with torch.no_grad():
        model(images, row_pos)
    assert len(seen) == 5
    for k, (height, pos) in seen.items():
        assert torch.equal(pos, row_pos)
    with pytest.raises(ValueError, match="row_pos"):
        model(images, row_pos[:, :100])
    with pytest.raises(TypeError, match="row_pos"):
        model(images, torch.zeros(2, 128, dtype=torch.long))


def test_the_model_checks_row_pos_values_once_not_in_every_layer(monkeypatch):
    """Checking values reads back to the host (a GPU sync): model(x) builds valid positions and
    checks none; an explicit row_pos is checked once, before the five layers; a bad one still
    raises ValueError naming row_pos."""
    import hanet_fast.models.deeplab as deeplab
    import hanet_fast.nn.hanet as hanet_module

    calls = []
    for module in (deeplab, hanet_module):
        real = module.check_row_pos
        monkeypatch.setattr(module, "check_row_pos", lambda pos, where, real=real: calls.append(where) or real(pos, where))
    model = _small(hanet_layers=(1, 1, 1, 1, 1)).eval()
    images = torch.randn(2, 3, 72, 24)
    with torch.no_grad():
        model(images)
        assert calls == []
        model(images, _row_pos(2, 72, top=10, full=300), return_attention=True)
        assert calls == ["hanet_fast.models"]
        bad = _row_pos(2, 72)
        bad[1, 5] = float("nan")
        with pytest.raises(ValueError, match="row_pos must hold"):
            model(images, bad)
    layer = model.hanet1  # called alone, a layer still checks its values
    x_low, x_high = torch.randn(2, layer.in_channels, 9, 3), torch.randn(2, layer.out_channels, 9, 3)
    with pytest.raises(ValueError, match="row_pos must hold"):
        layer(x_low, x_high, bad)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_no_row_pos_is_exactly_the_full_image_positions_at_every_height(output_stride):
    """model(x) == model(x, arange(H) / H) bit for bit, also for heights that are not multiples
    of the rows (where coarse row j sits at image row floor(j * H / rows), position not always j)."""
    model = _small(output_stride=output_stride, hanet_layers=(1, 1, 1, 1, 1)).eval()
    _randomize_bn(model, 2)
    for height in (200, 216, 250, 375, 723):
        images = torch.randn(1, 3, height, 24)
        with torch.no_grad():
            assert torch.equal(model(images).logits, model(images, _row_pos(1, height)).logits), height


def test_predict_and_the_data_pipeline_use_the_same_full_image_positions():
    """predict without row_pos (infer) is model(x) (at 216 rows, not a multiple of 16), and the
    data sets' numpy positions (evaluate) are the same float32 values as the model's default."""
    from hanet_fast.data import full_row_pos
    from hanet_fast.inference import predict
    from hanet_fast.nn import full_image_row_pos

    for height in (1, 7, 200, 216, 250, 375, 723, 1024, 4097):
        assert torch.equal(torch.from_numpy(full_row_pos(height)), full_image_row_pos(1, height)[0]), height
    model = _small(hanet_layers=(1, 1, 1, 1, 1)).eval()
    images = torch.randn(1, 3, 216, 24)
    with torch.no_grad():
        assert torch.equal(predict(model, images), model(images).logits.softmax(1))


def test_no_row_pos_matches_the_official_network_on_full_images_of_any_height():
    """216 rows (not a multiple of 16): the default path equals the official network fed the
    full-image position maps (issue 21: it differed by 13.9 % with coarse row j at position j)."""
    official = _official_network("mobilenetv2", "D16", seed=3, size=(216, 40), hanet=(1, 1, 1, 1, 1),
                                 hanet_set=(3, 16, 3), hanet_pos=(2, 1))
    model = load_official_checkpoint({"state_dict": official.state_dict(), "command": _command(
        "DeepMobileNetV3PlusD_HANet", (1, 1, 1, 1, 1), (3, 16, 3), (2, 1))})
    images = torch.randn(2, 3, 216, 40)
    with torch.no_grad():
        ref = official(images, official_pos(2, 216, 40))
        out = model(images).logits
    assert ((out - ref).abs().max() / ref.abs().max()).item() <= 1e-5


@pytest.mark.parametrize("argv,flag", [(["--size", "0", "0"], "--size"), (["--size", "-5", "10"], "--size"),
                                       (["--reduction", "-1"], "--reduction"), (["--reduction", "0"], "--reduction"),
                                       (["--hanet-layers", "1", "1", "1", "1", "2"], "--hanet-layers")])
def test_summary_bad_arguments_are_one_line(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        summary_main(argv)
    err = capsys.readouterr().err
    # argparse's usage line, then the one error line naming the flag; no traceback
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"python -m hanet_fast.models.summary: error: {flag} "), err


def test_aux_head():
    model = _small(output_stride=32)
    model.train()
    assert model(torch.randn(2, 3, 40, 40)).aux_logits.shape == (2, 5, 2, 2)
    model.eval()
    assert model(torch.randn(1, 3, 40, 40)).aux_logits is None
    assert model(torch.randn(1, 3, 40, 40), return_aux=True).aux_logits.shape == (1, 5, 2, 2)
    no_aux = _small(aux=False).train()
    assert no_aux.dsn is None and no_aux(torch.randn(2, 3, 40, 40)).aux_logits is None
    with pytest.raises(ValueError, match="aux"):
        no_aux(torch.randn(2, 3, 40, 40), return_aux=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="backbone"):
        deeplabv3plus("resnet18")
    with pytest.raises(ValueError, match="output_stride"):
        deeplabv3plus("mobilenet_v2", 4)
    with pytest.raises(ValueError, match="hanet_layers"):
        deeplabv3plus("mobilenet_v2", 16, hanet_layers=(1, 1))
    with pytest.raises(ValueError, match="is on but"):
        deeplabv3plus("mobilenet_v2", 16, hanet_layers=(1, 0, 0, 0, 0), hanet=[None] * 5)
    with pytest.raises(ValueError, match="images"):
        _small()(torch.randn(1, 1, 32, 32))


# ============================================================================ memory format, autocast, compile
def test_channels_last_matches_nchw():
    model = _small(output_stride=8, hanet_layers=(1, 1, 1, 1, 1))
    _randomize_bn(model, 2)
    images = torch.randn(2, 3, 48, 40)
    pos = _row_pos(2, 48, top=8, full=96)
    model.eval()
    with torch.no_grad():
        ref = model(images, pos).logits
    model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(images.to(memory_format=torch.channels_last), pos).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    model.train()
    out = model(images.to(memory_format=torch.channels_last), pos)
    (out.logits.mean() + out.aux_logits.mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_autocast_bf16():
    model = _small(output_stride=16, hanet_layers=(1, 1, 1, 1, 1))
    images = torch.randn(2, 3, 48, 40)
    model.eval()
    with torch.no_grad():
        ref = model(images, return_attention=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(images, return_attention=True)
    assert out.logits.dtype == torch.bfloat16
    err = (out.logits.float() - ref.logits).abs().max() / ref.logits.abs().max()
    assert err < 0.1
    for name, attn in out.attention.items():
        assert (attn.float() - ref.attention[name]).abs().max() < 0.1
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, _row_pos(2, 48))
        loss = out.logits.float().mean() + out.aux_logits.float().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_torch_compile_fullgraph():
    model = _small(backbone="shufflenet_v2_x1_0", output_stride=32, hanet_layers=(1, 1, 1, 1, 1)).eval()
    images = torch.randn(1, 3, 64, 64)
    pos = _row_pos(1, 64, top=16, full=128)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        ref = model(images, pos, return_attention=True)
        out = compiled(images, pos, return_attention=True)
    torch.testing.assert_close(out.logits, ref.logits)
    assert out.attention.keys() == ref.attention.keys()


# ============================================================================ pretrained backbones
def test_imagenet_offline_fails_clearly(monkeypatch):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"pretrained_backbone=PATH") as info:
        deeplabv3plus("shufflenet_v2_x1_0", 32, pretrained_backbone="imagenet")
    assert "download.pytorch.org" in str(info.value)
    with pytest.raises(ValueError, match="deep-stem"):
        deeplabv3plus("resnet101_deepstem", 8, pretrained_backbone="imagenet")


def test_imagenet_uses_torchvision_weights(monkeypatch):
    torch.manual_seed(3)
    reference = tvm.shufflenet_v2_x1_0()
    urls = []

    def fake(url, *args, **kwargs):
        urls.append(url)
        return reference.state_dict()

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", fake)
    model = deeplabv3plus("shufflenet_v2_x1_0", 16, pretrained_backbone="imagenet")
    assert urls == [tvm.ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1.url]
    assert torch.equal(model.layer1[0].branch1[0].weight, reference.stage2[0].branch1[0].weight)
    assert torch.equal(model.layer4[0].weight, reference.conv5[0].weight)


def test_pretrained_backbone_from_path(tmp_path):
    torch.manual_seed(4)
    net = tvm.mobilenet_v2()
    path = tmp_path / "mbv2.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    model = deeplabv3plus("mobilenet_v2", 8, pretrained_backbone=path)
    assert torch.equal(model.layer2[0].conv[1][0].weight, net.features[7].conv[1][0].weight)
    assert model.layer2[0].conv[1][0].dilation == (2, 2)
    # the trunk's own naming (layer0..layer4) loads too, e.g. from another hanet_fast model
    trunk_path = tmp_path / "trunk.pth"
    torch.save(model.state_dict(), trunk_path)
    again = deeplabv3plus("mobilenet_v2", 16, pretrained_backbone=trunk_path)
    assert torch.equal(again.layer4[0][0].weight, model.layer4[0][0].weight)
    # the deep-stem file of the official code (network/Resnet.py naming)
    deep = OfficialResNet3X3()
    deep_path = tmp_path / "resnet101-imagenet.pth"
    torch.save(deep.state_dict(), deep_path)
    r101 = deeplabv3plus("resnet101_deepstem", 16, pretrained_backbone=deep_path)
    assert torch.equal(r101.layer0[6].weight, deep.conv3.weight)
    assert torch.equal(r101.layer1[0].downsample[0].weight, deep.layer1[0].downsample[0].weight)
    with pytest.raises(ValueError, match="missing from the file"):
        deeplabv3plus("shufflenet_v2_x1_0", 16, pretrained_backbone=path)
    with pytest.raises(FileNotFoundError):
        deeplabv3plus("mobilenet_v2", 16, pretrained_backbone=tmp_path / "nope.pth")


# ============================================================================ official checkpoints
def _command(arch: str, hanet, hanet_set, hanet_pos, pos_rfactor=8, extra="") -> str:
    return (f"--dataset cityscapes --arch network.deepv3.{arch} --city_mode train --lr_schedule poly --lr 0.01 "
            f"--poly_exp 0.9 --hanet_lr 0.01 --hanet_poly_exp 0.9 --hanet {' '.join(map(str, hanet))} "
            f"--hanet_set {' '.join(map(str, hanet_set))} --hanet_pos {' '.join(map(str, hanet_pos))} "
            f"--pos_rfactor {pos_rfactor} --dropout 0.1 --pos_noise 0.5 --aux_loss --syncbn --sgd --crop_size 768 "
            f"--max_iter 40000 --bs_mult 2 --exp r101_os8_hanet {extra}")


ARCHS = {
    "resnet-50": "DeepR50V3PlusD_HANet",
    "resnet-101": "DeepR101V3PlusD_HANet",
    "resnet-152": "DeepR152V3PlusD_HANet",
    "resnext-50": "DeepResNext50V3PlusD_HANet",
    "resnext-101": "DeepResNext101V3PlusD_HANet",
    "wide_resnet-50": "DeepWideResNet50V3PlusD_HANet",
    "wide_resnet-101": "DeepWideResNet101V3PlusD_HANet",
    "shufflenetv2": "DeepShuffleNetV3PlusD_HANet",
    "mobilenetv2": "DeepMobileNetV3PlusD_HANet",
    "mnasnet_05": "DeepMNASNet05V3PlusD_HANet",
    "mnasnet_10": "DeepMNASNet10V3PlusD_HANet",
}


@pytest.mark.parametrize("trunk", list(OFFICIAL_TRUNKS))
def test_official_keys_round_trip(trunk):
    """Every official trunk: names convert one to one onto the inferred hanet_fast network and back."""
    variant, suffix, os_ = ("D", "_OS8", 8) if trunk != "shufflenetv2" else ("D32", "_OS32", 32)
    hanet, hanet_set, hanet_pos = (1, 0, 1, 1, 1), (5, 16, 2), (1, 0)
    official = _official_meta(trunk, variant=variant, hanet=hanet, hanet_set=hanet_set, hanet_pos=hanet_pos).state_dict()
    command = _command(ARCHS[trunk] + suffix, hanet, hanet_set, hanet_pos, extra="--pooling max")
    config = infer_official_config({f"module.{k}": v for k, v in official.items()}, command)
    layer = HANetConfig(rows=16, reduction=16, kernel_size=5, num_convs=2, pooling="max", dropout=0.1,
                        pos_encoding="learned", pos_injection=1, pos_noise=0.5)
    assert config == DeepLabConfig(OFFICIAL_TRUNKS[trunk], os_, 19, (layer, None, layer, layer, layer), True)
    with torch.device("meta"):
        ours = hm.DeepLabV3PlusHANet.from_config(config)
    converted = convert_official_state_dict(official)
    mine = ours.state_dict()
    assert converted.keys() == mine.keys()
    assert all(converted[k].shape == mine[k].shape for k in mine)
    back = to_official_state_dict(ours)
    assert back.keys() == official.keys()


def test_official_inference_from_weights_alone():
    """No command line: everything but the output stride comes from the weights."""
    official = _official_meta("resnet-101", hanet=(1, 1, 1, 1, 0), hanet_set=(3, 64, 3), hanet_pos=(2, 1),
                              aux_loss=False).state_dict()
    with pytest.raises(OfficialCheckpointError, match="output_stride"):
        infer_official_config(official)
    config = infer_official_config(official, output_stride=16)
    assert (config.backbone, config.output_stride, config.num_classes, config.aux) == ("resnet101_deepstem", 16, 19, False)
    assert config.hanet_layers == (1, 1, 1, 1, 0)
    # meta tensors carry no values: the table kind defaults to sinusoidal; the reduction is 64 or
    # any ratio giving the same widths (ceil(1024/64) = ceil(1024/r) for r in 64..)
    assert all(c.pos_encoding == "sinusoidal" and c.pos_injection == 2 and c.rows == 16 for c in config.hanet[:4])
    assert [math.ceil(c_in / c.reduction) for c_in, c in zip((1024, 2048, 1280, 304), config.hanet)] == [16, 32, 20, 5]
    # the torchvision 7x7-stem ResNet-101 (not an official trunk) is told apart from the deep stem
    with torch.device("meta"):
        tv = deeplabv3plus("resnet101", 8)
    assert infer_official_config(to_official_state_dict(tv), output_stride=8).backbone == "resnet101"
    with pytest.raises(OfficialCheckpointError, match="backbone"):
        infer_official_config({"final2.0.weight": torch.zeros(19, 256, 1, 1)}, output_stride=8)


def _official_network(trunk, variant, seed, size, **kwargs):
    """An official network with trained-like state: random biases and learned tables, and BN
    statistics calibrated on random images (so activations stay O(1), as in a trained network)."""
    torch.manual_seed(seed)
    net = OfficialDeepV3PlusHANet(19, trunk, variant, **kwargs)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Embedding) and m.weight.requires_grad:  # learned tables
                m.weight.normal_()
            if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.bias is not None:
                m.bias.normal_(0, 0.1)
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.momentum = None  # cumulative average
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
        net.train()
        H, W = size
        for _ in range(2):
            net(torch.randn(4, 3, H, W), official_pos(4, H, W))
    return net.eval()


OFFICIAL_CASES = {
    # paper's headline model: ResNet-101 deep stem, OS 8, L1-L4, sinusoidal encoding after conv 1
    "r101_os8": dict(trunk="resnet-101", variant="D", arch="DeepR101V3PlusD_HANet_OS8", size=(128, 48),
                     kwargs=dict(hanet=(1, 1, 1, 1, 0), hanet_set=(3, 64, 3), hanet_pos=(2, 1))),
    # MobileNetV2, OS 16, all five layers, two convs, kernel 5, learned table injected at the input
    "mbv2_os16": dict(trunk="mobilenetv2", variant="D16", arch="DeepMobileNetV3PlusD_HANet", size=(256, 40),
                      kwargs=dict(hanet=(1, 1, 1, 1, 1), hanet_set=(5, 16, 2), hanet_pos=(1, 0))),
    # the official architectures added later, each as deepv3.py defines it, with the scripts'
    # HANet settings; sizes where every x_low height is a multiple of the 16 rows
    "resnext101_os4": dict(trunk="resnext-101", variant="D4", arch="DeepResNext101V3PlusD_HANet_OS4", size=(64, 16),
                           kwargs=dict(hanet=(1, 1, 1, 1, 0), hanet_set=(3, 64, 3), hanet_pos=(2, 1))),
    "r152_os8": dict(trunk="resnet-152", variant="D", arch="DeepR152V3PlusD_HANet_OS8", size=(128, 16),
                     kwargs=dict(hanet=(1, 1, 1, 1, 0), hanet_set=(3, 64, 3), hanet_pos=(2, 1))),
    "resnext50_os16": dict(trunk="resnext-50", variant="D16", arch="DeepResNext50V3PlusD_HANet", size=(256, 32),
                           kwargs=dict(hanet=(1, 1, 1, 1, 0), hanet_set=(3, 32, 3), hanet_pos=(2, 1))),
    # MNASNet at OS 16 (stage 3: 320 / 16 - 4 = 16 rows); L4/L5 off: their x_low (stride 8, 40
    # rows) is not a multiple of 16 rows
    "mnasnet05_os16": dict(trunk="mnasnet_05", variant="D16", arch="DeepMNASNet05V3PlusD_HANet", size=(320, 96),
                           kwargs=dict(hanet=(1, 1, 1, 0, 0), hanet_set=(3, 16, 3), hanet_pos=(2, 1))),
    "mnasnet10_os16": dict(trunk="mnasnet_10", variant="D16", arch="DeepMNASNet10V3PlusD_HANet", size=(320, 96),
                           kwargs=dict(hanet=(1, 1, 1, 0, 0), hanet_set=(3, 16, 3), hanet_pos=(2, 1))),
}


@pytest.mark.parametrize("case", list(OFFICIAL_CASES))
def test_official_checkpoint_outputs_match(case, tmp_path):
    """A snapshot file as the official train.py writes it loads, and the outputs equal the official
    network's for the same weights, input and positions (fp32, eval)."""
    c = OFFICIAL_CASES[case]
    official = _official_network(c["trunk"], c["variant"], seed=7, size=c["size"], **c["kwargs"])
    k = c["kwargs"]
    path = tmp_path / "best_epoch_3_mean-iu_0.80000.pth"
    torch.save({"state_dict": {f"module.{key}": v for key, v in official.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
                "epoch": 3, "mean_iu": np.float64(0.8),
                "command": _command(c["arch"], k["hanet"], k["hanet_set"], k["hanet_pos"])}, path)
    model = load_official_checkpoint(path)
    assert not model.training
    H, W = c["size"]
    torch.manual_seed(1)
    images = torch.randn(2, 3, H, W)
    for top, full in ((0, H), (H // 2, 2 * H)):  # full images, then crops of the lower half of a taller image
        with torch.no_grad():
            ref = official(images, official_pos(2, H, W, top, full))
            out = model(images, _row_pos(2, H, top, full)).logits
        rel = ((out - ref).abs().max() / ref.abs().max()).item()
        assert rel <= 1e-5, rel
    # with the reference (stock PyTorch) ops instead of the fused kernels: the same arithmetic
    for module in model.hanet_modules.values():
        module.backend = "reference"
    with torch.no_grad():
        out = model(images, _row_pos(2, H, top, full)).logits
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())
    # and back: the official names of the loaded model are the file's
    assert to_official_state_dict(model).keys() == official.state_dict().keys()


def test_official_checkpoint_errors(tmp_path):
    official = _official_meta("shufflenetv2", variant="D16", hanet=(1, 1, 0, 0, 0)).state_dict()
    official = {k: torch.zeros(v.shape) for k, v in official.items()}
    state = dict(official)
    state["criterion.nll_loss.weight"] = torch.ones(19)  # loss buffers are ignored
    model = load_official_checkpoint({"state_dict": state}, output_stride=16)
    assert isinstance(model, hm.DeepLabV3PlusHANet) and model.config.hanet_layers == (1, 1, 0, 0, 0)
    # keys that do not fit are all listed
    broken = dict(official)
    del broken["aspp.img_conv.0.weight"]
    broken["hanet1.attention_fourth.0.weight"] = torch.zeros(3)
    broken["final1.0.weight"] = torch.zeros(256, 300, 3, 3)
    with pytest.raises(OfficialCheckpointError) as info:
        load_official_checkpoint(broken, output_stride=16)
    message = str(info.value)
    assert "aspp.img_conv.0.weight" in message
    assert "hanet1.attention_fourth.0.weight" in message
    assert "final1.0.weight: checkpoint (256, 300, 3, 3) vs model (256, 304, 3, 3)" in message
    with pytest.raises(OfficialCheckpointError, match="num_classes"):
        load_official_checkpoint(official, output_stride=16, num_classes=21)
    with pytest.raises(OfficialCheckpointError, match="--arch"):
        load_official_checkpoint({"state_dict": official, "command": "--arch network.deepv3.DeepR50V3PlusD_HANet"})
    with pytest.raises(OfficialCheckpointError, match="state dict"):
        load_official_checkpoint({"epoch": 3})
    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "missing.pth")


def test_hanet_fast_model_round_trips_through_official_names():
    model = _small(backbone="shufflenet_v2_x1_0", output_stride=32, hanet_layers=(1, 0, 0, 1, 1),
                   hanet=HANetConfig(pos_encoding="learned", pos_injection=1))
    _randomize_bn(model, 5)
    loaded = load_official_checkpoint({"state_dict": to_official_state_dict(model)}, output_stride=32,
                                      hanet=HANetConfig(dropout=0.1))
    assert loaded.config == dataclasses.replace(model.config)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


# ============================================================================ Table 2
@pytest.mark.parametrize("backbone,output_stride,reduction", [("mobilenet_v2", 16, 16), ("resnet101_deepstem", 8, 32)])
def test_cost_matches_paper_table2(backbone, output_stride, reduction):
    """Parameters and the paper's "GFLOPs" (multiply-adds + pooled elements, 1024x2048) of Table 2."""
    paper = PAPER_TABLE2[(backbone, output_stride)]
    base = model_cost(backbone, output_stride)
    plus = model_cost(backbone, output_stride, (1, 1, 1, 1, 0), HANetConfig(reduction=reduction))
    assert round(base.params / 1e6, 1) == paper[0] and round(plus.params / 1e6, 1) == paper[1]
    assert abs(base.paper_gflops - paper[2]) <= 0.015 and abs(plus.paper_gflops - paper[3]) <= 0.015


def test_added_official_architectures_limits():
    """Output stride 4 exists for the ResNet family only (official variant D4); an MNASNet 0.5
    checkpoint from torchvision < 0.5 (unscaled 32-channel stem) is named, not mis-loaded."""
    with pytest.raises(ValueError, match="output_stride of mobilenet_v2"):
        deeplabv3plus("mobilenet_v2", 4)
    with torch.device("meta"):
        model = deeplabv3plus("mnasnet0_5", 16, hanet_layers=(1, 1, 1, 0, 0))
        assert model.aspp.rates == (6, 12, 18)
        assert deeplabv3plus("resnet50", 4).aspp.rates == (24, 48, 72)
    state = to_official_state_dict(model)
    assert infer_official_config(state, output_stride=16).backbone == "mnasnet0_5"
    state["layer0.0.weight"] = torch.zeros(32, 3, 3, 3, device="meta")
    with pytest.raises(OfficialCheckpointError, match="torchvision < 0.5"):
        infer_official_config(state, output_stride=16)


def test_pretrained_backbone_from_an_official_snapshot(tmp_path):
    """train_resnext_fr_pretrain's --snapshot: an official snapshot (module. keys, a numpy mean_iu,
    other classes' heads) gives its trunk (here a small trunk stands in for ResNeXt-101)."""
    torch.manual_seed(5)
    source = deeplabv3plus("mobilenet_v2", 16, num_classes=65, hanet_layers=(0,) * 5)
    path = tmp_path / "mapillary_snapshot.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in to_official_state_dict(source).items()},
                "epoch": 3, "mean_iu": np.float64(0.47475), "command": "--dataset mapillary"}, path)
    model = deeplabv3plus("mobilenet_v2", 16, num_classes=19, pretrained_backbone=path)
    assert torch.equal(model.layer3[0].conv[1][0].weight, source.layer3[0].conv[1][0].weight)
    assert not torch.equal(model.aspp.img_conv[0].weight, source.aspp.img_conv[0].weight)  # trunk only
