"""Run `ns-train` with nerfstudio's LPIPS made lazy (its AlexNet weights cannot be
downloaded here); used by the test that trains nerfstudio's nerfacto on our dataparser."""

import sys

from headstudio.metrics.lpips import patch_torchmetrics_lpips

patch_torchmetrics_lpips()

if __name__ == "__main__":
    from nerfstudio.scripts.train import entrypoint

    sys.argv = ["ns-train"] + sys.argv[1:]
    entrypoint()
