"""The sidecar's package never imports torch: its image ships without it."""

import subprocess
import sys


def test_importing_the_firewall_and_its_scoring_pulls_in_no_torch():
    code = ("import sys, firewall, firewall.scoring, firewall.thresholds, firewall.artifacts; "
            "bad = [m for m in ('torch', 'torchvision', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
