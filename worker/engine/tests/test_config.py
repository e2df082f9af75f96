from pathlib import Path

import pytest
import torch

from portrait_engine.config import EngineConfig, parse_config

ENV = {
    "ENGINE_PROFILE": "real",
    "ENGINE_CACHE_DIR": "/cache",
    "ENGINE_DEVICE": "cpu",
    "ENGINE_BASE_MODEL": "/models/sd15",
    "ENGINE_CONTROLNET": "/models/openpose",
}


def test_every_flag_falls_back_to_the_environment():
    assert parse_config([], ENV) == EngineConfig(
        profile="real",
        cache_dir=Path("/cache"),
        device=torch.device("cpu"),
        base_model=Path("/models/sd15"),
        controlnet=Path("/models/openpose"),
    )
    assert parse_config(["--profile", "tiny", "--cache-dir", "/elsewhere"], ENV).cache_dir == Path("/elsewhere")
    scheduling = parse_config(["--max-jobs", "3"], {"ENGINE_LORA_PATH": "peft", "ENGINE_TRAIN_ROWS": "0",
                                                    "ENGINE_LORA_SLOTS": "4", "ENGINE_LORA_MAX_RANK": "64"})
    assert (scheduling.lora_path, scheduling.max_jobs, scheduling.train_rows) == ("peft", 3, 0)
    assert (scheduling.lora_slots, scheduling.lora_max_rank) == (4, 64)
    assert not scheduling.train_buckets and parse_config([], {"ENGINE_TRAIN_BUCKETS": "on"}).train_buckets
    assert scheduling.train_share == pytest.approx(1 / 3) and parse_config([], {"ENGINE_TRAIN_SHARE": "0.5"}).train_share == 0.5


@pytest.mark.parametrize(
    "argv, env",
    [
        (["--profile", "real"], {}),
        ([], {"ENGINE_PROFILE": "huge"}),
        (["--device", "gpu"], {}),
        ([], {"ENGINE_LORA_PATH": "fast"}),
        (["--max-jobs", "0"], {}),
        ([], {"ENGINE_TRAIN_ROWS": "many"}),
    ],
)
def test_bad_configuration_stops_with_a_usage_error(argv, env, capsys):
    with pytest.raises(SystemExit) as exit:
        parse_config(argv, env)
    assert exit.value.code == 2 and "error:" in capsys.readouterr().err
