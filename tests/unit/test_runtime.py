"""The one holder of the live config (bkd.runtime): a reload swaps in a
valid config whole and tells the listeners; an invalid one, or one that
changes what only a restart may change, leaves the running config alone."""

from runcore import Core, host


async def test_a_valid_reload_swaps_the_whole_config_and_tells_each_listener_old_and_new(tmp_path):
    core = Core(tmp_path, [host("a", tmp_path)])
    before = core.runtime.config
    heard = []
    core.runtime.on_reload(lambda old, new: heard.append((old, new)))
    core.write([host("a", tmp_path), host("b", tmp_path)], max_parallel_hosts=2)
    answer = await core.runtime.reload()
    assert answer == {"ok": True, "changes": ["host b added", "max_parallel_hosts changed"], "errors": []}
    after = core.runtime.config
    assert heard == [(before, after)] and after is not before
    assert [h.name for h in before.host] == ["a"] and before.max_parallel_hosts == 4  # never mutated


async def test_an_invalid_config_or_a_restart_only_change_leaves_the_running_config_alone(tmp_path):
    core = Core(tmp_path, [host("a", tmp_path)])
    before = core.runtime.config
    heard = []
    core.runtime.on_reload(lambda old, new: heard.append(new))
    core.write([host("a", tmp_path)], max_parallel_hosts=0)
    answer = await core.runtime.reload()
    assert not answer["ok"] and answer["changes"] == [] and len(answer["errors"]) == 1
    assert answer["errors"][0].startswith(f"{core.path}:max_parallel_hosts: ")
    core.write([host("a", tmp_path)], backup_root=str(tmp_path / "elsewhere"))
    answer = await core.runtime.reload()
    assert answer["errors"] == [f"{core.path}:backup_root: cannot change while bkd runs "
                                f"(still {tmp_path / 'backup'}); restart bkd"]
    assert core.runtime.config is before and heard == []


async def test_replicated_hosts_learned_of_are_hosts_of_the_live_config_and_outlive_a_reload(tmp_path):
    replica = {"name": "p1", "source": "prim:/srv/bkd/", "hosts": ["web*"]}
    core = Core(tmp_path, [host("a", tmp_path)], replica=[replica])
    heard = []
    core.runtime.on_reload(lambda old, new: heard.append([h.name for h in new.host]))
    core.runtime.replicated_hosts("p1", ["web1", "db1"])
    core.runtime.replicated_hosts("p1", ["db1", "web1"])  # the same: nothing to tell
    assert heard == [["a", "p1.web1"]]
    assert [h.name for h in core.runtime.loaded.host] == ["a"]  # the files' config is kept apart
    await core.reload([host("a", tmp_path), host("b", tmp_path)], replica=[replica])
    assert [h.name for h in core.runtime.config.host] == ["a", "b", "p1.web1"]
    await core.reload([host("a", tmp_path)], replica=[])  # the [[replica]] is gone: so are its hosts
    assert [h.name for h in core.runtime.config.host] == ["a"]
