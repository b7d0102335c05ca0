"""The suite's safety net: a test that hangs fails alone, with its stack,
after the per-test timeout (pytest-timeout), and the run goes on."""

import subprocess
import sys
import textwrap


def test_the_suite_sets_a_per_test_timeout(pytestconfig):
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert float(pytestconfig.getini("timeout")) > 0


def test_a_hanging_test_fails_alone_with_its_stack(tmp_path):
    (tmp_path / "test_hang.py").write_text(textwrap.dedent("""
        import time

        def test_hangs():
            time.sleep(120)

        def test_after_it():
            pass
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=1",
                             str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "Timeout" in result.stdout and "test_hangs" in result.stdout
    assert "time.sleep(120)" in result.stdout  # the stack of the hanging call
    assert "1 failed, 1 passed" in result.stdout
