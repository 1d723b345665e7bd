"""What must run without torch never imports it: the sidecar (its image ships without torch), and the
results table (anyone can render docs/RESULTS.md from the committed records on a plain Python)."""

import subprocess
import sys


def _imports_no_torch(modules: str) -> None:
    code = (f"import sys, {modules}; "
            "bad = [m for m in ('torch', 'torchvision', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_firewall_and_its_scoring_pulls_in_no_torch():
    _imports_no_torch("firewall, firewall.scoring, firewall.thresholds, firewall.artifacts")


def test_the_results_table_renders_without_torch():
    _imports_no_torch("offline.results_table")
