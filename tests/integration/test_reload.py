"""Reload against a live daemon: each component whose live keys changed takes them at once
(queue capacity and policy, snapshot and checkpoint retention), restart keys keep their running
value and are reported, and an invalid file changes nothing."""

from __future__ import annotations

import pytest

from ferretd.config import ConfigError
from tests.integration.harness import ThreadedDaemon, config_from, write_config


def test_a_reload_reconfigures_exactly_the_components_whose_live_keys_changed(ipc_dir):
    path = write_config(ipc_dir, ingest={"queue_capacity": 64}, checkpoint={"keep": 3})
    config = config_from(path)
    with ThreadedDaemon(config, config_path=str(path)) as td:
        daemon = td.daemon
        text = path.read_text().replace("queue_capacity = 64", 'queue_capacity = 8\noverflow = "drop_newest"')
        path.write_text(text.replace("keep = 3", "keep = 1") + "[model]\nhidden = [32]\n")
        result = daemon.call_in_loop(daemon.reload, timeout=60)
        assert "[ingest] queue_capacity" in result["applied"] and "[checkpoint]" in result["applied"]
        assert result["needs_restart"] == ["[model] hidden"]
        assert (daemon.queue.capacity, daemon.queue.overflow) == (8, "drop_newest")
        assert daemon.checkpoints.store.keep == 1
        assert daemon.config.model.hidden == config.model.hidden, "a restart key keeps its running value"

        good = path.read_text()
        path.write_text("[ingest]\nqueue_capacity = -1\n")
        with pytest.raises(ConfigError):
            daemon.call_in_loop(daemon.reload, timeout=60)
        assert daemon.queue.capacity == 8, "an invalid file changes nothing"
        path.write_text(good)
    assert td.exit_code == 0
