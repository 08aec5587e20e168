"""SIGTERM stops ``lit-vit test`` and ``lit-vit analyze`` during the analysis, as Ctrl-C does."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest


def stop_when(command: list[str], line_part: str) -> tuple[int, str]:
    """Run ``python -m lit_vit <command>``, send SIGTERM when a console line contains
    ``line_part``; its exit status and its console."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lit_vit", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    console = []
    for line in process.stdout:
        console.append(line)
        if line_part in line:
            process.send_signal(signal.SIGTERM)
            break
    console.append(process.stdout.read())
    return process.wait(timeout=120), "".join(console)


@pytest.mark.parametrize("command", ["test", "analyze"])
def test_sigterm_stops_the_test_time_analysis_like_ctrl_c(command, tmp_path, attention_run):
    logs = tmp_path / "logs"
    if command == "test":
        args = [
            "test",
            *attention_run.args,
            f"--ckpt_path={attention_run.checkpoint}",
            f"--trainer.logger.init_args.save_dir={logs}",
        ]
    else:
        args = [
            "analyze",
            f"--ckpt_path={attention_run.checkpoint}",
            f"--data_dir={attention_run.data_dir}",
            f"--save_dir={logs}",
            "--probe_size=4",
        ]
    status, console = stop_when(args, "AttentionMaps: analysing")
    assert status == 1, console
    assert "KeyboardInterrupt, attempting graceful shutdown" in console
    assert "Traceback" not in console
    assert not list(logs.rglob("report.md")), "stopped before the report"
    assert attention_run.checkpoint.is_file()
