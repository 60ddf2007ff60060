"""The arithmetic of benchmarks/protocol_speed.py's suite estimate (issue 26, item 7), against a hand computation
from the celeba64 suite's workload: 9 defenses (8 trained, the hard-label target loaded), 5 seeds, 50 epochs of
the KED-MI split's 27,018 training images, a DCGAN of 120 epochs over 30,000 public images in batches of 64,
1,000 attacked identities per target, GMI / KED-MI / PLG-MI at their plugins' default step counts."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("protocol_speed", ROOT / "benchmarks" / "protocol_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.load_plugins()
    return module


def test_split_counts_are_the_published_ones(speed):
    assert speed.kedmi_counts() == {"train": 27_018, "public": 30_000}


def test_celeba64_hours_follow_the_workload(speed):
    figures = {"gmi": {"gan_step_s": 0.0, "search_step_s": 0.5, "ids_per_step": 2},
               "ked-mi": {"gan_step_s": 0.2, "search_step_s": 0.4, "ids_per_step": 10},
               "plg-mi": {"gan_step_s": 0.3, "search_step_s": 0.6, "ids_per_step": 4}}
    lines = list(speed.suite_hours(ROOT / "suites" / "celeba64.yaml", {"vgg16-64": 100.0}, 0.1, figures,
                                   {"train": 27_018, "public": 30_000}))
    targets = 8 * 5 * 50 * 27_018 / 100.0
    prior = 120 * (30_000 // 64) * 0.1
    gmi = 45 * 1000 * 1500 * 0.5 / 2
    ked = 45 * (120 * (30_000 // 64) * 0.2 + 1000 * 2400 * 0.4 / 10)
    plg = 45 * (30_000 * 0.3 + 1000 * 600 * 0.6 / 4)
    total = float(re.match(r"celeba64\.yaml:\s+([\d.]+) h", lines[0]).group(1))
    assert total == pytest.approx((targets + prior + gmi + ked + plg) / 3600, abs=0.06)
    assert "gmi-lomma" in lines[1] and "brep-mi" in lines[1] and "mirror-b" in lines[1]


def test_gan_steps_of_each_attack(speed):
    attacks = speed.attacks
    assert speed.gan_steps_of(attacks.get("gmi").Params(), 30_000) == 0
    assert speed.gan_steps_of(attacks.get("ked-mi").Params(), 30_000) == 120 * 468
    assert speed.gan_steps_of(attacks.get("ked-mi").Params(gan_steps=7), 30_000) == 7
    assert speed.gan_steps_of(attacks.get("plg-mi").Params(), 30_000) == 30_000


def test_per_step_is_the_difference_of_two_runs_and_refuses_noise(speed):
    import time

    import torch

    cpu = torch.device("cpu")
    step, first = speed.per_step(cpu, lambda n: time.sleep(0.05 * n) or n, 1, 3)
    assert step == pytest.approx(0.05, abs=0.02) and first == 1
    with pytest.raises(speed.NoiseError, match="below the timing noise; raise --steps"):
        speed.per_step(cpu, lambda n: time.sleep(0.1 if n == 1 else 0.0), 1, 2)
