import json
from conftest import make_tree
def test_x(tmp_path, daemon_factory):
    d = daemon_factory([{"name": "web1", "source": str(make_tree(tmp_path / "s", 5))}]).start()
    d.run_snapshot()
    for args in (["/dir0"], ["/dir0"], ["/dir0", "--overwrite"], ["/", "--dry-run"], ["/nonexist"]):
        r = d.bkctl("restore", "web1", "latest", *args, "--to", str(tmp_path / "out"))
        print(r.returncode, r.stdout, r.stderr)
    r = d.bkctl("run", "--wait")
    print(r.returncode, r.stdout, r.stderr)
