"""docs/custom-models.md is executable: its example factory and TOML are extracted from the doc,
checked with ``ferretd --check-config`` and trained by a real daemon. A factory with the wrong
output width, one that is not found, and one that cannot be exported each fail with one line
(exit 2) at --check-config and at start; the export error names the real reason."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ferretd.config import ConfigError, ModelConfig
from ferretd.models import build_model
from tests.integration.harness import (
    ROOT,
    ThreadedDaemon,
    child_env,
    config_from,
    digits,
    wait_for,
    write_config,
)
from transports.client import SamplePublisher

DOC = (ROOT / "docs" / "custom-models.md").read_text()
EXAMPLE_PY = re.search(r"```python\n(.*?)```", DOC, re.S).group(1)
EXAMPLE_TOML = re.search(r"```toml\n(.*?)```", DOC, re.S).group(1)
FFT_FACTORY = '''
import torch
from torch import nn

class Spectrum(nn.Module):
    def forward(self, x):
        return torch.fft.rfft(x).abs()[:, :10]

def spectral(config):
    return nn.Sequential(nn.Sequential(Spectrum()))
'''


def doc_setup(ipc_dir: str, toml: str = EXAMPLE_TOML, module: str = EXAMPLE_PY, name: str = "digits_models"):
    """The doc's layout: the module under models/ next to the config, which names factory_path "models"."""
    path = write_config(ipc_dir)
    (path.parent / "models").mkdir(exist_ok=True)
    (path.parent / "models" / f"{name}.py").write_text(module)
    path.write_text(path.read_text() + "\n" + toml)
    return path


def ferretd(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferretd", *argv], capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=120
    )


def one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "Torch IR graph" not in result.stdout, "torch's IR dump must not reach the log"
    return lines[0]


def test_the_documented_example_checks_and_trains(ipc_dir):
    path = doc_setup(ipc_dir)
    checked = ferretd("--check-config", "--config", str(path))
    assert checked.returncode == 0 and "config ok" in checked.stdout, checked.stderr

    config = config_from(path)
    assert config.model.factory_path == str(path.parent / "models"), "relative to the config file"
    x, y = digits(120)
    with ThreadedDaemon(config) as td, SamplePublisher(config.ingest.endpoint, "dev") as pub:
        assert [type(b).__name__ for b in td.daemon.trainer.model_template()] == ["Sequential"] * 3
        for features, label in zip(x, y, strict=True):
            pub.publish(features, int(label))
        wait_for(lambda: td.settled(120), timeout=60, what="120 samples trained")
        manifest = td.daemon.call_in_loop(td.daemon.snapshot_now).result(60)
        assert manifest["classes"] == 10 and manifest["model"] == "custom"


def test_wrong_output_width_fails_at_check_and_at_start(ipc_dir):
    hard_coded = EXAMPLE_PY.replace("config.num_classes", "10")  # the classic mistake
    path = doc_setup(ipc_dir, EXAMPLE_TOML.replace("num_classes = 10", "num_classes = 7"), hard_coded)
    line = one_line_exit_2(ferretd("--check-config", "--config", str(path)))
    assert "[model] num_classes: is 7 but the factory's model outputs 10" in line
    started = one_line_exit_2(ferretd("--config", str(path)))
    assert "num_classes: is 7" in started


def test_factory_not_found_says_to_set_factory_path(ipc_dir):
    path = doc_setup(ipc_dir, EXAMPLE_TOML.replace('factory_path = "models"', ""))
    line = one_line_exit_2(ferretd("--check-config", "--config", str(path)))
    assert "module 'digits_models' not found; set [model] factory_path" in line


def test_a_model_that_cannot_export_names_the_operator_not_onnxscript(ipc_dir):
    toml = EXAMPLE_TOML.replace("digits_models:conv1d_digits", "spectral_models:spectral")
    path = doc_setup(ipc_dir, toml, FFT_FACTORY, name="spectral_models")
    line = one_line_exit_2(ferretd("--check-config", "--config", str(path)))
    assert "cannot be exported" in line and "aten::fft_rfft" in line and "onnxscript" not in line, line


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("tests.integration.test_custom_models:no_such_function", "has no function 'no_such_function'"),
        ("tests.integration.test_custom_models:returns_a_linear", "must return nn.Sequential"),
        ("tests.integration.test_custom_models:raises", "raised RuntimeError: boom"),
        ("tests.integration.test_custom_models:wrong_input", "cannot take input [64]"),
    ],
)
def test_factory_errors_are_config_errors(factory, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_model(ModelConfig(name="custom", factory=factory))


def returns_a_linear(config):
    from torch import nn

    return nn.Linear(64, 10)


def raises(config):
    raise RuntimeError("boom\nsecond line")


def wrong_input(config):
    from torch import nn

    return nn.Sequential(nn.Linear(32, 10))
