"""MONAI SwinUNETR as a multi-scale feature extractor (subclassed, not forked)."""
from __future__ import annotations

from monai.networks.nets import SwinUNETR
from torch import Tensor

from .config import BackboneConfig

# Output strides of the decoder maps the query decoder reads, coarse to fine.
QUERY_STRIDES = (32, 16, 8, 4)


class SwinUNETRFeatures(SwinUNETR):
    """SwinUNETR whose forward returns decoder feature maps instead of segmentation logits.

    The 1x1x1 output head of SwinUNETR is removed (the DSM heads replace it), so every
    parameter that remains takes part in the forward pass.
    """

    def __init__(self, in_channels: int, cfg: BackboneConfig) -> None:
        super().__init__(
            in_channels=in_channels,
            out_channels=1,
            depths=tuple(cfg.depths),
            num_heads=tuple(cfg.num_heads),
            window_size=cfg.window_size,
            feature_size=cfg.feature_size,
            norm_name=cfg.norm_name,
            drop_rate=cfg.drop_rate,
            attn_drop_rate=cfg.attn_drop_rate,
            dropout_path_rate=cfg.dropout_path_rate,
            use_checkpoint=cfg.use_checkpoint,
            use_v2=cfg.use_v2,
            use_flash_attention=cfg.use_flash_attention,
        )
        del self.out
        fs = cfg.feature_size
        # Channels of the maps at output strides 32, 16, 8, 4 and of the stride-1 map.
        self.query_channels = (16 * fs, 8 * fs, 4 * fs, 2 * fs)
        self.pixel_channels = fs

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """x: (B, C_in, D, H, W), each spatial size a multiple of 32.

        Returns ``{"scales": [stride 32, 16, 8, 4 maps], "pixel": stride-1 map}``.
        """
        self._check_input_size(x.shape[2:])
        hidden = self.swinViT(x, self.normalize)
        enc0 = self.encoder1(x)
        enc1 = self.encoder2(hidden[0])
        enc2 = self.encoder3(hidden[1])
        enc3 = self.encoder4(hidden[2])
        dec4 = self.encoder10(hidden[4])  # stride 32
        dec3 = self.decoder5(dec4, hidden[3])  # stride 16
        dec2 = self.decoder4(dec3, enc3)  # stride 8
        dec1 = self.decoder3(dec2, enc2)  # stride 4
        dec0 = self.decoder2(dec1, enc1)  # stride 2
        pixel = self.decoder1(dec0, enc0)  # stride 1
        return {"scales": [dec4, dec3, dec2, dec1], "pixel": pixel}
