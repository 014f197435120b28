"""A newcomer's first start shows the service's own log, not third-party alarms it cannot act on."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.hardening.helpers import ROOT

ALARMS = ("No ccache found", "PLEASE USE OMP_NUM_THREADS WISELY", "OMP_NUM_THREADS set to",
          "Setuptools is replacing distutils")


def test_the_server_log_at_start_has_no_third_party_alarms(server_process):
    server = server_process()
    log = server.log_text()
    assert "ready: " in log  # the service's own line is there
    assert not [alarm for alarm in ALARMS if alarm in log], log


def test_importing_paddle_through_the_model_package_prints_nothing_but_other_stderr_still_shows():
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the service picks the core count
    code = ("import sys, model, paddle, os; print('still shown', file=sys.stderr); "
            "assert int(os.environ['OMP_NUM_THREADS']) == (os.cpu_count() or 1)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == ["still shown"], done.stderr
