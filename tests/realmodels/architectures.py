"""Small torch definitions of the architectures real deployments use (torchvision does not
install beside the CPU torch), with seeded random weights and non-trivial batch-norm statistics.

Each follows its published design in the ops it exports to, at a size that keeps the corpus quick:

- ``TinyYOLO``: a YOLOv8-style detector (Conv+BN+SiLU, C2f blocks with Split and Concat, SPPF,
  an FPN with nearest Resize and Concat of levels, decoupled heads) whose single output
  concatenates decoded boxes in pixels and sigmoid class scores: ``(batch, 4 + classes, anchors)``.
  Its sides must be multiples of 32 (the upsampled level is concatenated with the one above).
- ``UNet``: two-level encoder/decoder with ConvTranspose upsampling and skip Concats.
- ``TextRNN``: int64 token ids -> Embedding -> bidirectional LSTM -> GRU -> per-token tags.
- ``LCNet``: PP-LCNet (Cui et al. 2021): depthwise-separable blocks with HardSwish, SE blocks
  with HardSigmoid, a 1x1 conv head; a text-orientation classifier on 48x192 crops.
- ``HybridRecognizer``: a conv stem then transformer blocks (LayerNorm, multi-head attention by
  MatMul/Softmax, GELU MLP) over the width, per-position character logits (SVTR-style).
- ``ByteCNN``: a byte classifier as TF-converted ones look (int32 bytes, Mul/Add "embedding").
- ``TinyVAD``: a voice activity detector over raw audio (reflect padding, Conv1d, LSTM).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from onnxpress.samples.architectures import randomise_bn as _randomise_bn


# ------------------------------------------------------------------------------------- YOLO

class _ConvBNSiLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.bn(self.conv(x)))


class _Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = _ConvBNSiLU(c, c)
        self.cv2 = _ConvBNSiLU(c, c)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class _C2f(nn.Module):
    """YOLOv8's C2f: 1x1 conv, Split in two, a chain of bottlenecks, Concat of every stage."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = _ConvBNSiLU(cin, 2 * self.c, 1)
        self.cv2 = _ConvBNSiLU((2 + n) * self.c, cout, 1)
        self.m = nn.ModuleList(_Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class _SPPF(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1 = _ConvBNSiLU(c, c // 2, 1)
        self.cv2 = _ConvBNSiLU(c * 2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = F.max_pool2d(x, 5, 1, 2)
        y2 = F.max_pool2d(y1, 5, 1, 2)
        y3 = F.max_pool2d(y2, 5, 1, 2)
        return self.cv2(torch.cat((x, y1, y2, y3), 1))


class TinyYOLO(nn.Module):
    """YOLOv8-n-like detector, width 16-64. Output: boxes (cx, cy, w, h in pixels) and class
    scores in [0, 1], concatenated on axis 1 over the anchors of the three levels."""

    strides = (8, 16, 32)

    def __init__(self, num_classes: int = 8) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(_ConvBNSiLU(3, 16, 3, 2), _ConvBNSiLU(16, 16, 3, 2), _C2f(16, 16))
        self.p3 = nn.Sequential(_ConvBNSiLU(16, 32, 3, 2), _C2f(32, 32))                 # stride 8
        self.p4 = nn.Sequential(_ConvBNSiLU(32, 48, 3, 2), _C2f(48, 48))                 # stride 16
        self.p5 = nn.Sequential(_ConvBNSiLU(48, 64, 3, 2), _C2f(64, 64), _SPPF(64))     # stride 32
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td4 = _C2f(64 + 48, 48, shortcut=False)
        self.td3 = _C2f(48 + 32, 32, shortcut=False)
        self.heads = nn.ModuleList(
            nn.ModuleList([nn.Sequential(_ConvBNSiLU(c, 32), nn.Conv2d(32, 4, 1)),
                           nn.Sequential(_ConvBNSiLU(c, 32), nn.Conv2d(32, num_classes, 1))])
            for c in (32, 48, 64))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p3 = self.p3(self.stem(images))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        n4 = self.td4(torch.cat((self.up(p5), p4), 1))
        n3 = self.td3(torch.cat((self.up(n4), p3), 1))
        outputs = []
        for level, (feature, stride) in enumerate(zip((n3, n4, p5), self.strides)):
            box_head, cls_head = self.heads[level]
            box = box_head(feature)
            h, w = feature.shape[2], feature.shape[3]
            gy = torch.arange(h, dtype=feature.dtype).view(1, 1, h, 1).expand(1, 1, h, w)
            gx = torch.arange(w, dtype=feature.dtype).view(1, 1, 1, w).expand(1, 1, h, w)
            centre = (torch.cat((gx, gy), 1) + 0.5 + torch.tanh(box[:, :2])) * stride
            size = torch.exp(box[:, 2:].clamp(max=4.0)) * stride
            scores = torch.sigmoid(cls_head(feature))
            outputs.append(torch.cat((centre, size, scores), 1).flatten(2))
        return torch.cat(outputs, 2)


def tiny_yolo(seed: int = 0) -> TinyYOLO:
    torch.manual_seed(seed)
    return _randomise_bn(TinyYOLO()).eval()


# ------------------------------------------------------------------------------------- UNet

class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """Ronneberger et al. 2015 at two levels: max-pool down, ConvTranspose up, skip Concats."""

    def __init__(self, channels: int = 3, classes: int = 2, width: int = 16) -> None:
        super().__init__()
        self.down1 = _DoubleConv(channels, width)
        self.down2 = _DoubleConv(width, width * 2)
        self.bottom = _DoubleConv(width * 2, width * 4)
        self.up2 = nn.ConvTranspose2d(width * 4, width * 2, 2, stride=2)
        self.dec2 = _DoubleConv(width * 4, width * 2)
        self.up1 = nn.ConvTranspose2d(width * 2, width, 2, stride=2)
        self.dec1 = _DoubleConv(width * 2, width)
        self.out = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        b = self.bottom(F.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat((self.up2(b), d2), 1))
        u1 = self.dec1(torch.cat((self.up1(u2), d1), 1))
        return self.out(u1)


def unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return _randomise_bn(UNet()).eval()


# ----------------------------------------------------------------------------- RNN text model

class TextRNN(nn.Module):
    """Token tagger: Embedding, a bidirectional LSTM, a GRU, per-token logits."""

    def __init__(self, vocab: int = 500, dim: int = 32, tags: int = 9) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(2 * dim, dim, batch_first=True)
        self.classifier = nn.Linear(dim, tags)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x, _ = self.lstm(self.embed(input_ids))
        x, _ = self.gru(x)
        return self.classifier(x)


def text_rnn(seed: int = 0) -> TextRNN:
    torch.manual_seed(seed)
    return TextRNN().eval()


# ------------------------------------------------------------------------------------ PP-LCNet

class _ConvBNHardSwish(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, s: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardswish(self.bn(self.conv(x)))


class _SE(nn.Module):
    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // reduction, 1)
        self.fc2 = nn.Conv2d(c // reduction, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class _DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, s: int, se: bool) -> None:
        super().__init__()
        self.dw = _ConvBNHardSwish(cin, cin, k, s, groups=cin)
        self.se = _SE(cin) if se else nn.Identity()
        self.pw = _ConvBNHardSwish(cin, cout, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.se(self.dw(x)))


class LCNet(nn.Module):
    """PP-LCNet x0.25 layout: 3x3 stem, 13 depthwise-separable blocks (5x5 kernels and SE in the
    last ones), global pooling, a 1x1 conv head with HardSwish, dropout-free classifier."""

    # (kernel, in, out, stride, se) at scale 0.25
    blocks = ((3, 8, 16, 1, False), (3, 16, 16, 2, False), (3, 16, 16, 1, False), (3, 16, 32, 2, False),
              (3, 32, 32, 1, False), (3, 32, 64, 2, False), (5, 64, 64, 1, False), (5, 64, 64, 1, False),
              (5, 64, 64, 1, False), (5, 64, 64, 1, False), (5, 64, 64, 1, False), (5, 64, 128, 2, True),
              (5, 128, 128, 1, True))

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = _ConvBNHardSwish(3, 8, 3, 2)
        self.features = nn.Sequential(*(_DepthwiseSeparable(cin, cout, k, s, se)
                                        for k, cin, cout, s, se in self.blocks))
        self.head = nn.Conv2d(128, 256, 1)
        self.fc = nn.Linear(256, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(self.stem(x)), 1)
        x = F.hardswish(self.head(x))
        return self.fc(torch.flatten(x, 1)).softmax(-1)


def lcnet(seed: int = 0) -> LCNet:
    torch.manual_seed(seed)
    return _randomise_bn(LCNet()).eval()


# ------------------------------------------------------------------------ conv+attention hybrid

class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HybridRecognizer(nn.Module):
    """Text-line recogniser: conv stem (32x128 -> 4x32), height pooled away, positional
    embedding, two attention blocks over the 32 columns, per-column character logits."""

    def __init__(self, dim: int = 64, heads: int = 4, charset: int = 97) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(),
            nn.Conv2d(dim, dim, 3, (2, 1), 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU())
        self.position = nn.Parameter(torch.randn(1, 32, dim) * 0.02)
        self.blocks = nn.Sequential(_Block(dim, heads), _Block(dim, heads))
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, charset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).mean(2).transpose(1, 2)   # (batch, 32 columns, dim)
        x = self.blocks(x + self.position)
        return self.classifier(self.norm(x)).softmax(-1)


def hybrid_recognizer(seed: int = 0) -> HybridRecognizer:
    torch.manual_seed(seed)
    return _randomise_bn(HybridRecognizer()).eval()


# ------------------------------------------------------------------------------- byte classifier

class ByteCNN(nn.Module):
    """A byte-level text classifier as TF-converted ones look: int32 byte values, an
    "embedding" by Mul/Add of the integer value with per-channel vectors, Conv1d, max over time."""

    def __init__(self, dim: int = 32, classes: int = 5) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(1, dim, 1) * 0.05)
        self.shift = nn.Parameter(torch.randn(1, dim, 1))
        self.conv1 = nn.Conv1d(dim, dim, 5, padding=2)
        self.conv2 = nn.Conv1d(dim, dim, 5, padding=2)
        self.fc = nn.Linear(dim, classes)

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        x = data.float().unsqueeze(1).expand(-1, self.scale.shape[1], -1) * self.scale + self.shift
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.amax(-1))


def byte_cnn(seed: int = 0) -> ByteCNN:
    torch.manual_seed(seed)
    return ByteCNN().eval()


# ------------------------------------------------------------------------ voice activity detector

class TinyVAD(nn.Module):
    """Silero-style VAD: reflect padding, a strided Conv1d filter bank over raw audio, log
    magnitude, an LSTM over frames and a per-utterance speech probability. The reflect padding
    (64 samples) needs inputs longer than 64 samples."""

    def __init__(self, filters: int = 32) -> None:
        super().__init__()
        self.bank = nn.Conv1d(1, filters, 128, stride=64, bias=False)
        self.lstm = nn.LSTM(filters, filters, batch_first=True)
        self.out = nn.Linear(filters, 1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = F.pad(audio.unsqueeze(1), (64, 64), mode="reflect")
        x = torch.log1p(self.bank(x).abs()).transpose(1, 2)
        x, _ = self.lstm(x)
        return torch.sigmoid(self.out(x)).mean(1)


def tiny_vad(seed: int = 0) -> TinyVAD:
    torch.manual_seed(seed)
    return TinyVAD().eval()
