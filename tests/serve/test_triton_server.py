"""The server's environment: the serving venv first, the main venv's Python out, numeric pools on one thread."""

from pathlib import Path

from pipelines.serve.triton_server import BLAS_THREAD_VARS, ServingEnv, server_environment

SERVING = ServingEnv(venv=Path("/srv/venv"), python_version="3.11", libdir=Path("/srv/lib"),
                     tritonserver_root=Path("/srv/tritonserver"), wheel_libs=Path("/srv/libs"))


def test_the_stubs_get_the_serving_venv_and_one_thread_per_numeric_library():
    base = {"PATH": "/usr/bin", "PYTHONPATH": "/work/main", "PYTHONHOME": "/x", "LD_LIBRARY_PATH": "/opt/lib"}
    env = server_environment(SERVING, base)
    assert "PYTHONPATH" not in env and "PYTHONHOME" not in env and env["VIRTUAL_ENV"] == "/srv/venv"
    assert env["PATH"].startswith("/srv/venv/bin:") and env["LD_LIBRARY_PATH"] == "/srv/lib:/srv/libs:/opt/lib"
    assert all(env[key] == "1" for key in BLAS_THREAD_VARS)
    assert base["PYTHONPATH"] == "/work/main"  # the caller's mapping is left as it was


def test_a_thread_count_the_caller_set_is_kept():
    assert server_environment(SERVING, {"OMP_NUM_THREADS": "4"})["OMP_NUM_THREADS"] == "4"
