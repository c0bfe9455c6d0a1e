import os
import subprocess
import sys
import time

from pipelines.core.processes import group_members, pid_alive


def test_a_running_process_is_alive_and_a_reaped_one_is_not():
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)
    assert not pid_alive(0) and not pid_alive(-1)


def test_a_zombie_counts_as_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while pid_alive(child.pid) and time.monotonic() < deadline:  # exited, not reaped yet: a zombie
        time.sleep(0.02)
    try:
        assert not pid_alive(child.pid)
        os.kill(child.pid, 0)  # the signal alone would still call it alive
    finally:
        child.wait()


def test_group_members_lists_live_processes_of_the_group():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        assert group_members(child.pid) == [child.pid]
        assert os.getpid() in group_members(os.getpgid(0))
    finally:
        child.kill()
        child.wait()
    assert group_members(child.pid) == []
