"""lotto_jax.sharding: meshes, placements, and multi-device training."""

import os
import subprocess
import sys

import jax
import pytest

from lotto_jax import sharding


def test_parse_mesh():
    assert sharding.parse_mesh("data=4,model=2") == {"data": 4, "model": 2}
    assert sharding.parse_mesh(None) == {"data": -1}
    for bad in ("data4", "batch=2", "data=x", "data=0"):
        with pytest.raises(ValueError, match="mesh"):
            sharding.parse_mesh(bad)


def test_make_mesh_on_one_device():
    mesh = sharding.make_mesh()
    assert dict(mesh.shape) == {"data": len(jax.devices()), "model": 1}
    with pytest.raises(ValueError, match="devices"):
        sharding.make_mesh("data=3")


def test_data_parallel_and_fsdp_match_one_device():
    """8 host devices in a subprocess: param_shardings' specs and shard shapes (FSDP
    over model=2 and model=4), masks.init keeping them, and training that gives the
    same params as one device with the shardings kept."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    script = os.path.join(os.path.dirname(__file__), "_multidevice_train.py")
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PARAM SHARDINGS OK" in proc.stdout
    assert "MULTIDEVICE OK" in proc.stdout
